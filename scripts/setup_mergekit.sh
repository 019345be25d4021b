#!/usr/bin/env bash
# Side venv .cache/venv-mergekit with mergekit 0.1.5 for tests/taskvec/test_taskvec_merge.py
# (our TIES / task arithmetic checked against mergekit's own code). Idempotent;
# run after scripts/setup.sh.
#
# Like .cache/venv-repeng (scripts/setup_steering_interop.sh) it does NOT get its
# own torch (6 GB): it uses .venv's interpreter, and a .pth file appends .venv's
# site-packages to its sys.path, so torch / transformers / safetensors / pydantic /
# click / tqdm / huggingface_hub / sentencepiece / protobuf / numpy come from .venv.
# mergekit 0.1.5 declares transformers>=5,<6, accelerate>=1.6,<2, peft>=0.18,
# immutables>=0.21, safetensors>=0.5.2, pydantic>=2.10.6, click>=8.2.1,
# tqdm>=4.67.1: .venv's versions satisfy every one it has, so only the packages
# .venv lacks are installed here, pinned, with --no-deps. scipy and datasets
# are declared but never imported by mergekit 0.1.5, so they are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/side_venv.sh

side_venv .cache/venv-mergekit "mergekit==0.1.5 peft==0.21.2 accelerate==1.15.0 immutables==0.21"
if [ "$SIDE_VENV_INSTALLED" = 1 ]; then
  .cache/venv-mergekit/bin/python -c 'import mergekit.merge_methods, mergekit.merge, mergekit.config' >/dev/null 2>&1 \
    || { rm -f .cache/venv-mergekit/.plasticity-deps; echo "error: mergekit in .cache/venv-mergekit does not import" >&2; exit 1; }
fi
