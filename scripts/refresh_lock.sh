#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions the suite passed with, as CI installs them (`.ci/run`):
# a new virtual environment takes today's newest versions that pyproject.toml allows, runs the README's test
# command, and only if every test passes writes what it installed to constraints.txt. Run it now and then (a
# cron line, or by hand before a release) and commit the new lock with the suite's figures:
#
#     bash scripts/refresh_lock.sh            # ~1 min to install, then the suite (~10 min on 2 cores)
#     bash scripts/refresh_lock.sh --no-tests # write the lock without running the suite (not for committing)
#     TORCH=torch==2.13.0 bash scripts/refresh_lock.sh   # a given torch (e.g. the CPU build already on disk)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${TORCH:-torch}"   # default: the newest torch for this platform
"$venv/bin/python" -m pip install -q -e ".[dev]"
bash scripts/install_llama.sh "$venv/bin/python"   # llama.cpp for the GGUF checks, as CI builds it

if [[ "${1:-}" != "--no-tests" ]]; then
    "$venv/bin/python" -m pytest -q
fi

# torch's local label (+cpu, +cu128) names a build, not a version: the lock holds for every build of it
{
    echo "# The versions the suite passed with, written by scripts/refresh_lock.sh on $(date -u +%F)"
    echo "# ($(uname -sm), Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))."
    echo "# Install the tested set with: pip install -e \".[dev]\" -c constraints.txt"
    "$venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages locked"
