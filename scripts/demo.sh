#!/usr/bin/env bash
# The main job: set everything up (idempotent), then run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
