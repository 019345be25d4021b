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
echo "== cargo test --workspace"
cargo test --workspace --release
echo "== pytest (set-up and cargo test took ${SECONDS} s)"
.venv/bin/python -m pytest -q -rs --durations=25 tests "$@"
