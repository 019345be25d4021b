#!/usr/bin/env bash
# Run every test: set-up (idempotent), the Rust workspace tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo test --workspace"
cargo test --workspace --release
echo "== pytest"
.venv/bin/python -m pytest -q -rs tests "$@"
