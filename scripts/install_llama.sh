#!/usr/bin/env bash
# llama.cpp itself (llama-cpp-python, compiled from its source) for tests/test_gguf.py's checks, built as the
# library alone: 4 min 20 s on 2 cores (with its tools and every CPU variant, pip's default: ~21 min).
#
#   bash scripts/install_llama.sh [PYTHON [pip args ...]]     # PYTHON: default .venv/bin/python
#
# For AVX2 with FMA and F16C (x86-64-v3: every x86 CPU of the last ten years), not for "this CPU" (GGML_NATIVE):
# built natively on a Xeon with AMX, llama.cpp 0.3.36's CPU backend dies of a general protection fault in
# libggml-cpu on q8_0 models, and took the test worker with it. Never from pip's wheel cache (--no-cache-dir): a
# wheel built with other flags would be reused as it is. .ci/run and scripts/refresh_lock.sh install it this way.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
shift || true
CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip install -q --no-cache-dir -e ".[llama]" "$@"
