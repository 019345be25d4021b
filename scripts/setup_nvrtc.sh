#!/usr/bin/env bash
# NVRTC for CUDA 13 (PyPI's nvidia-cuda-nvrtc) in a side folder outside the checkout, cached like
# the models and the cargo target (${PLASTICITY_CACHE_DIR:-~/.cache/plasticity}/nvrtc/PIN), for
# plasticity-cuda's nvrtc_compile test: compiling kernels/*.cu to PTX needs NVRTC but no driver
# and no GPU, so CI checks every kernel compiles. Idempotent; prints the path of libnvrtc.so.13.
# Measured here: an 86 MiB download installed in about 1 s uncached, nothing when cached.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PLASTICITY_CACHE_DIR:-$HOME/.cache/plasticity}
PIN="nvidia-cuda-nvrtc==13.0.88"  # the NVRTC torch 2.11/2.13+cu130 ships (the GPU host's)
DIR=$CACHE/nvrtc/${PIN//==/-}
LIB=$DIR/nvidia/cu13/lib/libnvrtc.so.13
if [ ! -f "$DIR/.plasticity-deps" ] || [ "$(cat "$DIR/.plasticity-deps")" != "$PIN" ] || [ ! -f "$LIB" ]; then
  echo "== installing $PIN into $DIR" >&2
  rm -rf "$DIR.tmp"
  python3 -m uv pip install -q -p "${PYTHON:-python3}" --no-deps --target "$DIR.tmp" "$PIN" >&2
  rm -rf "$DIR"
  mv "$DIR.tmp" "$DIR"
  echo "$PIN" > "$DIR/.plasticity-deps"
fi
[ -f "$LIB" ] || { echo "error: $LIB missing after installing $PIN" >&2; exit 1; }
echo "$LIB"
