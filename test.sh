#!/usr/bin/env bash
# Set up from scratch (fresh venv unless one is reused) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/python -m pytest -q -n 2 "$@"
