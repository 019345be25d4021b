#!/usr/bin/env bash
# Run every test: set-up (idempotent), the Rust workspace tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Rust build artefacts live outside the checkout, like the models: a fresh clone on the same
# machine (CI) then rebuilds only this workspace's crates, not every dependency.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${PLASTICITY_CACHE_DIR:-$HOME/.cache/plasticity}/cargo-target}
bash scripts/setup.sh
# Side venvs with the reference tools (upstream gguf, repeng) for the interop tests.
bash scripts/setup_steering_interop.sh
# Side venv with mergekit 0.1.5 for the task-vector merge comparison.
bash scripts/setup_mergekit.sh
# NVRTC from PyPI in a side folder: plasticity-cuda's tests compile every kernel with it (no GPU
# needed), and fail rather than skip when it or the C++ compiler (the kernels' RNG run on the host)
# is missing.
PLASTICITY_NVRTC_LIB=$(bash scripts/setup_nvrtc.sh)
export PLASTICITY_NVRTC_LIB PLASTICITY_REQUIRE_NVRTC=1 PLASTICITY_REQUIRE_CXX=1
echo "== cargo test --workspace"
cargo test --workspace --release
echo "== pytest (set-up and cargo test took ${SECONDS} s)"
.venv/bin/python -m pytest -q -rs --durations=25 tests "$@"
