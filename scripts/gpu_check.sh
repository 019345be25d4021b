#!/usr/bin/env bash
# One command for a GPU machine: every CUDA check of issue #15 that exists, one table (docs/gpu.md).
#
#   bash scripts/gpu_check.sh prepare   # here, on the build machine (cargo, .venv): the abi3 wheel and
#                                       # plasticity-cuda's test binaries into .cache/gpu-check/
#   bash scripts/gpu_check.sh [PYTHON]  # there, on the GPU machine, from a copy of this checkout that
#                                       # includes .cache/gpu-check/: no cargo, no vLLM, no network.
#                                       # PYTHON (default python3) must have torch with CUDA.
#
# The GPU run installs the wheel with `pip install --no-deps --no-index --target` into a temporary
# folder, points PLASTICITY_NVRTC_LIB at torch's NVRTC (site-packages/nvidia/cu13/lib/libnvrtc.so.13),
# runs the test binaries and scripts/gpu_check.py, and prints the table. It must end within 6 minutes:
# gpu_check.py gives every check what is left of a 300 s budget and still prints the table (a hard
# timeout at 330 s backs that up). Exit status 1 if any row FAILs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUNDLE=$ROOT/.cache/gpu-check

if [ "${1:-}" = "prepare" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${PLASTICITY_CACHE_DIR:-$HOME/.cache/plasticity}/cargo-target}
  rm -rf "$BUNDLE"
  mkdir -p "$BUNDLE/bin"
  echo "== the wheel (abi3, release)" >&2
  .venv/bin/maturin build --release -q -i .venv/bin/python -o "$BUNDLE"
  echo "== plasticity-cuda's test binaries" >&2
  cargo test --release -p plasticity-cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, shutil, sys
bundle = sys.argv[1]
tests = {}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        shutil.copy2(m["executable"], f"{bundle}/bin/{name}")
        tests[name] = f"bin/{name}"
json.dump({"tests": tests}, open(f"{bundle}/manifest.json", "w"), indent=1)
print("\n".join(sorted(tests)), file=sys.stderr)
' "$BUNDLE"
  du -sh "$BUNDLE" >&2
  echo "prepared $BUNDLE: copy the checkout with it to the GPU machine and run: bash scripts/gpu_check.sh" >&2
  exit 0
fi

PY=${1:-${PYTHON:-python3}}
[ -f "$BUNDLE/manifest.json" ] || { echo "error: $BUNDLE missing; run 'bash scripts/gpu_check.sh prepare' on the build machine" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --no-index --target "$WORK/site" "$BUNDLE"/plasticity-*.whl
else  # a venv without pip (uv's): a wheel installed with --target is its unpacked archive
  "$PY" -m zipfile -e "$BUNDLE"/plasticity-*.whl "$WORK/site"
fi
# torch's NVRTC (nvidia-cuda-nvrtc, a dependency of torch's CUDA 13 wheels), unless one is named.
if [ -z "${PLASTICITY_NVRTC_LIB:-}" ]; then
  PLASTICITY_NVRTC_LIB=$("$PY" - <<'EOF'
import pathlib
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
for root in map(pathlib.Path, nvidia.__path__):
    for p in (root / "cu13/lib/libnvrtc.so.13", root / "cuda_nvrtc/lib/libnvrtc.so.13"):
        if p.is_file():
            print(p)
            raise SystemExit(0)
EOF
)
fi
export PLASTICITY_NVRTC_LIB
echo "== NVRTC: ${PLASTICITY_NVRTC_LIB:-none found}" >&2
# The wheel first on the path, then the checkout (scripts/, tests/ for the pytest row).
PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" timeout 330 "$PY" scripts/gpu_check.py --bundle "$BUNDLE" \
  ${PLASTICITY_NVRTC_LIB:+--nvrtc "$PLASTICITY_NVRTC_LIB"}
