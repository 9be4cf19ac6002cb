#!/usr/bin/env bash
# llama.cpp itself (llama-cpp-python, compiled from its source) for tests/test_gguf.py's checks, built as the
# library alone for this CPU: 4 min 20 s on 2 cores (with its tools and every CPU variant, pip's default: ~21 min).
#
#   bash scripts/install_llama.sh [PYTHON [pip args ...]]     # PYTHON: default .venv/bin/python
#
# .ci/run and scripts/refresh_lock.sh install it this way.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
shift || true
CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip install -q -e ".[llama]" "$@"
