# Included by scripts/setup.sh right after llama.cpp's project() call (CMAKE_PROJECT_llama.cpp_INCLUDE).
# llama-cpp-python forces LLAMA_BUILD_COMMON on, but its Python code only loads libllama and libggml*:
# a normal variable here shadows that cache entry inside llama.cpp, so "common" is not compiled.
set(LLAMA_BUILD_COMMON OFF)
