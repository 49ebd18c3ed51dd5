#!/usr/bin/env bash
# Main job on the embedded defaults: set up, fine-tune the packaged encoder on SQuAD (fast CPU
# recipe, or the full recipe on a GPU), evaluate on dev, answer a sample question.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/spanqa quickstart "$@"
