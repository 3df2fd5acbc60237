#!/usr/bin/env bash
# Installs what the project needs. Usage: bash scripts/setup.sh [--test]
# torch: an already installed torch (CPU or CUDA build) is kept; otherwise torch 2.13.0 is installed first,
# so that the range in requirements.txt is satisfied and pip never pulls a different build on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
req=requirements.txt
[ "${1:-}" = "--test" ] && req=requirements-test.txt
"$PY" -m pip install --quiet -r "$req"
