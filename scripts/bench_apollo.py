#!/usr/bin/env python3
"""Optimizer step time: plasticity.Apollo vs apollo-torch vs torch AdamW.

Everything is measured in the same run, interleaved, with the same thread count,
and reported as ratios to the references (absolute times on a shared machine
are noise; ratios are not):

    ours/apollo-torch   goal (rank 256): ≤ 1/2.5
    ours/GEMM           goal (rank 256): ≤ 1.3 (torch.matmul of the projection alone)
    Mini/AdamW-fused    goal (rank 1):   ≤ 1.0

Usage: python scripts/bench_apollo.py [--threads 2] [--rounds 5] [--device cpu|cuda]

On CUDA every optimizer's step is timed with CUDA events on torch's current stream (plasticity's
side stream is ordered into it, so the end event marks its completion); goals there (issue #15,
H200, bf16, rank 256): ≤ 0.33 ms at 5120x17408, faster than fused AdamW; Apollo-Mini ≤ 0.25 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch

SHAPES = [(1024, 1024), (2048, 2048), (4096, 1024), (1024, 4096), (4096, 4096)]


DEVICE = "cpu"


def timed(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if DEVICE == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def make_param(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(dtype).to(DEVICE))
    p.grad = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    return p


def state_bytes(opt) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif hasattr(v, "ortho_matrix") and isinstance(v.ortho_matrix, torch.Tensor):
                total += v.ortho_matrix.numel() * v.ortho_matrix.element_size()
    return total


def bench_shape(shape, args, apollo_torch):
    from plasticity import Apollo

    m, n = shape
    d = min(m, n)
    dtype = getattr(torch, args.dtype)
    rows = []
    for rank, scale_type in ((256, "channel"), (1, "tensor")):
        runners = {}
        opts = {}

        p = make_param(shape, dtype)
        opts["ours"] = Apollo([p], lr=1e-4, rank=rank, scale_type=scale_type, threads=args.threads,
                              projection_precision="f32")
        runners["ours"] = opts["ours"].step
        if rank > 1 and DEVICE == "cpu":
            # Same step with the projection in bf16 (AVX512-BF16 where available).
            p16 = make_param(shape, dtype)
            opts["ours-bf16proj"] = Apollo([p16], lr=1e-4, rank=rank, scale_type=scale_type,
                                           threads=args.threads, projection_precision="bf16")
            runners["ours-bf16proj"] = opts["ours-bf16proj"].step

        if apollo_torch is not None and (dtype == torch.float32 or DEVICE == "cuda"):
            q = make_param(shape, dtype)
            group = dict(params=[q], rank=rank, proj="random", scale_type=scale_type,
                         scale=d / rank, update_proj_gap=200, proj_type="std")
            opts["apollo-torch"] = apollo_torch.APOLLOAdamW([group], lr=1e-4)
            runners["apollo-torch"] = opts["apollo-torch"].step

        for name, kw in (("adamw-foreach", dict(foreach=True)), ("adamw-fused", dict(fused=True))):
            q = make_param(shape, dtype)
            opts[name] = torch.optim.AdamW([q], lr=1e-4, **kw)
            runners[name] = opts[name].step

        # The projection GEMM alone, in the weights' dtype on CUDA (the issue's anchor), f32 on the CPU.
        gdt = dtype if DEVICE == "cuda" else torch.float32
        g = torch.randn(shape, dtype=gdt, device=DEVICE)
        proj = torch.randn(rank, d, dtype=gdt, device=DEVICE)
        if m >= n:
            runners["gemm"] = lambda: torch.matmul(g, proj.t())
        else:
            runners["gemm"] = lambda: torch.matmul(proj, g)

        # Interleave rounds so drift on a shared machine hits everyone alike.
        times = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, fn in runners.items():
                times[k] += timed(fn, warmup=1, reps=args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        param_bytes = m * n * torch.tensor([], dtype=dtype).element_size()
        row = dict(
            shape=f"{m}x{n}", rank=rank, scale=scale_type, dtype=args.dtype,
            ms={k: round(v, 3) for k, v in med.items()},
            state_bytes_per_param_byte={k: round(state_bytes(o) / param_bytes, 4) for k, o in opts.items()},
        )
        for key in ("ours", "ours-bf16proj"):
            if key not in med:
                continue
            tag = "" if key == "ours" else "_bf16proj"
            if "apollo-torch" in med:
                row["speedup_vs_apollo_torch" + tag] = round(med["apollo-torch"] / med[key], 2)
            row["over_gemm" + tag] = round(med[key] / med["gemm"], 2)
            row["over_adamw_fused" + tag] = round(med[key] / med["adamw-fused"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", default=None, help="e.g. 1024x1024,4096x1024")
    ap.add_argument("--json", default=None, help="write all rows to this file")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        try:
            import apollo_torch
        except ImportError as e:
            if "bitsandbytes" not in str(e):
                raise
            # apollo-torch imports bitsandbytes at module level but its plain APOLLO never uses it.
            import types

            sys.modules["bitsandbytes"] = types.ModuleType("bitsandbytes")
            print("apollo-torch: bitsandbytes missing, imported with a stub module (plain APOLLO does not use it)",
                  file=sys.stderr)
            import apollo_torch
    except Exception as e:  # noqa: BLE001 - a missing reference is reported, not fatal
        print(f"apollo-torch unavailable ({e}); its column is skipped", file=sys.stderr)
        apollo_torch = None
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    where = torch.cuda.get_device_name(0) if DEVICE == "cuda" else f"threads={args.threads}"
    print(f"# {where} torch={torch.__version__} dtype={args.dtype}", flush=True)
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, args, apollo_torch)

    print()
    print("ours = exact f32 projection; bf16p = same step with the projection GEMM in bf16 (AVX512-BF16)")
    print("| shape | rank | ours ms | bf16p ms | apollo-torch ms | AdamW foreach | AdamW fused | GEMM alone | "
          "× vs apollo-torch (ours / bf16p) | /GEMM (ours / bf16p) | /fused AdamW | state B per param B (ours, apollo-torch, AdamW) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        ms, sb = r["ms"], r["state_bytes_per_param_byte"]
        print(
            f"| {r['shape']} | {r['rank']} {r['scale']} | {ms['ours']:.2f} | {ms.get('ours-bf16proj', nan):.2f} | "
            f"{ms.get('apollo-torch', nan):.2f} | {ms['adamw-foreach']:.2f} | {ms['adamw-fused']:.2f} | {ms['gemm']:.2f} | "
            f"{r.get('speedup_vs_apollo_torch', nan)} / {r.get('speedup_vs_apollo_torch_bf16proj', nan)} | "
            f"{r['over_gemm']} / {r.get('over_gemm_bf16proj', nan)} | {r['over_adamw_fused']} | "
            f"{sb['ours']}, {sb.get('apollo-torch', nan)}, {sb['adamw-fused']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
