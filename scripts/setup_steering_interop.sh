#!/usr/bin/env bash
# Side venvs for the steering interop tests, kept apart from .venv so nothing
# upstream leaks into the served environment. Idempotent; run after scripts/setup.sh.
#
# 1. .cache/venv-gguf: the upstream `gguf` package (repeng's GGUF reader/writer
#    dependency) for tests/steering/test_steering_gguf_interop.py.
# 2. .cache/venv-repeng: repeng 0.4.0 (the only PyPI release) for
#    tests/steering/test_steering_vs_repeng.py. It does NOT get its own torch (6 GB):
#    a .pth file appends .venv's site-packages to its sys.path, so it reuses
#    .venv's torch / transformers / numpy / tqdm / pyyaml, and only the
#    packages .venv lacks are installed here, pinned, with --no-deps.
#    Caveat: repeng 0.4.0 declares numpy<2 only because of `np.float_` in type
#    annotations; with .venv's numpy 2.x, do `np.float_ = np.float64` before
#    `import repeng` (the test's driver script does).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=(python3 -m uv)

V=.cache/venv-gguf
[ -x "$V/bin/python" ] || "${UV[@]}" venv -q "$V"
"${UV[@]}" pip install -q -p "$V/bin/python" "gguf==0.17.1" "numpy<3"

source scripts/side_venv.sh
side_venv .cache/venv-repeng "repeng==0.4.0 scikit-learn==1.7.2 scipy==1.16.3 joblib==1.5.2 threadpoolctl==3.6.0 gguf==0.17.1"
