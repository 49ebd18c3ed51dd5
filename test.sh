#!/usr/bin/env bash
# Set up from scratch (fresh venv unless one is reused) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
bash scripts/setup-browser.sh   # Debian's chromium + chromedriver for the web-page test
.venv/bin/python -m pytest -q -n 2 "$@"
