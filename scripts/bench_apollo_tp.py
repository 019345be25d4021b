"""Apollo under tensor parallelism: step time and bytes summed over ranks, TP=N against TP=1.

    .venv/bin/python scripts/bench_apollo_tp.py [--model smollm2-135m-instruct] [--tp 2] [--rank 64]

Every linear weight of the model's decoder layers (shapes from its config.json) gets a random
gradient and one Apollo step per iteration, with vLLM's layout: q/k/v/gate/up column-parallel
(a block of output rows per rank), o/down row-parallel (a block of input columns). TP=1 is one
process on one thread with whole matrices; TP=N is N processes on one thread each, in a gloo group
on this machine, each stepping its shards (``Apollo.shard``). Printed: seconds per optimizer step
(the slowest rank), bytes each rank put into the sums per step, measured and from the formula
(a shard that cuts a matrix's channels sums 40 bytes; one that cuts its compressed dimension sums
R, 4·r·channels, and the channels' norms, 8·channels), and the formula at Qwen3-32B scale, TP=8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def shapes(cfg: dict) -> list[tuple[str, int, int, str]]:
    """(name, out, in, axis of the TP split) for one decoder layer."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // heads
    return [("q_proj", heads * hd, h, "rows"), ("k_proj", kv * hd, h, "rows"), ("v_proj", kv * hd, h, "rows"),
            ("o_proj", h, heads * hd, "cols"), ("gate_proj", inter, h, "rows"), ("up_proj", inter, h, "rows"),
            ("down_proj", h, inter, "cols")]


def formula_bytes(out: int, inp: int, axis: str, tp: int, rank: int) -> int:
    """Bytes one rank sums per Apollo step of this matrix's shard (the core's own count)."""
    from plasticity import _plasticity as rs

    if tp == 1 or min(out, inp) <= rank:
        return 0  # not sharded, or stepped by AdamW (elementwise: nothing to sum)
    shape = (out // tp, inp) if axis == "rows" else (out, inp // tp)
    return rs.apollo_shard_reduced_bytes(axis=axis, offset=0, global_shape=(out, inp), shape=shape, rank=rank)


def worker(rank_id: int, tp: int, init: str, a, out_path: str) -> None:
    import torch

    from plasticity import Apollo

    torch.set_num_threads(1)
    if tp > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank_id, world_size=tp)
    cfg = json.loads(Path(a.config).read_text())
    params, grads = [], []
    gen = torch.Generator().manual_seed(rank_id)
    layer = shapes(cfg)
    for _ in range(cfg["num_hidden_layers"]):
        for name, o, i, axis in layer:
            if tp == 1:
                shape, off = (o, i), 0
            else:
                along = o if axis == "rows" else i
                step = along // tp
                off, length = rank_id * step, (along - rank_id * step if rank_id == tp - 1 else step)
                shape = (length, i) if axis == "rows" else (o, length)
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
            params.append((p, axis, off, (o, i)))
            grads.append(torch.randn(shape, generator=gen) * 1e-3)
    opt = Apollo([p for p, *_ in params], lr=1e-4, rank=a.rank, update_proj_gap=200, threads=1)
    if tp > 1:
        for p, axis, off, whole in params:
            opt.shard(p, axis=axis, offset=off, global_shape=whole)
    times = []
    for it in range(a.steps + 1):
        for (p, *_), g in zip(params, grads):
            p.grad = g
        if tp > 1:
            dist.barrier()
        t0 = time.perf_counter()
        opt.step()
        if tp > 1:
            dist.barrier()
        if it > 0:  # the first step allocates the moments
            times.append(time.perf_counter() - t0)
    res = {"seconds_per_step": sum(times) / len(times), "bytes_per_step": opt.reduced_bytes / (a.steps + 1),
           "state_bytes": opt.state_bytes()}
    Path(out_path).write_text(json.dumps(res))
    if tp > 1:
        dist.barrier()
        os._exit(0)  # gloo's file store can abort in interpreter teardown (see tests/optim/apollo_shard_worker.py)


def run(tp: int, a) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(r), "--tp", str(tp), "--init",
                                   f"{tmp}/init", "--out", f"{tmp}/{r}.json", "--config", a.config,
                                   "--rank", str(a.rank), "--steps", str(a.steps)]) for r in range(tp)]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a TP={tp} worker failed")
        return [json.loads(Path(f"{tmp}/{r}.json").read_text()) for r in range(tp)]


QWEN3_32B = {"hidden_size": 5120, "intermediate_size": 25600, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 64}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--worker", type=int, default=None)
    ap.add_argument("--init")
    ap.add_argument("--out")
    ap.add_argument("--config")
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a.tp, a.init, a, a.out)
    if a.config is None:
        from models import model_dir

        a.config = str(Path(model_dir(a.model)) / "config.json")
    cfg = json.loads(Path(a.config).read_text())
    one, many = run(1, a)[0], run(a.tp, a)
    predicted = cfg["num_hidden_layers"] * sum(formula_bytes(o, i, ax, a.tp, a.rank) for _, o, i, ax in shapes(cfg))
    slowest = max(r["seconds_per_step"] for r in many)
    print(f"model {a.model}: {cfg['num_hidden_layers']} layers × {len(shapes(cfg))} matrices, Apollo rank {a.rank}")
    print(f"TP=1 (1 thread):           {one['seconds_per_step']:.3f} s per step, optimizer state "
          f"{one['state_bytes'] / 2**20:.1f} MiB")
    print(f"TP={a.tp} (1 thread per rank): {slowest:.3f} s per step (slowest rank) = "
          f"{slowest / one['seconds_per_step']:.2f}× TP=1, state per rank "
          f"{max(r['state_bytes'] for r in many) / 2**20:.1f} MiB")
    print(f"bytes summed per step per rank: measured {[int(r['bytes_per_step']) for r in many]}, "
          f"formula {predicted}")
    for name, o, i, ax in shapes(cfg):
        print(f"  {name:10s} {o:6d}×{i:<6d} {ax:4s}: {formula_bytes(o, i, ax, a.tp, a.rank)} bytes")
    big = QWEN3_32B["num_hidden_layers"] * sum(formula_bytes(o, i, ax, 8, 256) for _, o, i, ax in shapes(QWEN3_32B))
    print(f"Qwen3-32B, TP=8, rank 256 (formula): {big / 2**20:.1f} MiB per step per rank")
    for name, o, i, ax in shapes(QWEN3_32B):
        print(f"  {name:10s} {o:6d}×{i:<6d} {ax:4s}: {formula_bytes(o, i, ax, 8, 256)} bytes")


if __name__ == "__main__":
    main()
