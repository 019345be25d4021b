#!/usr/bin/env python3
"""Training tokens/s: context-frozen vs full backprop on the same examples (transformers, CPU).

    .venv/bin/python scripts/bench_training.py [--model qwen3-tiny] [--ctx 512] [--dec 64] [--threads 2]

Serving throughput idle vs during training is measured on the real server by
tests/test_training_serving.py::test_teach_behaviour_while_serving (run with -s;
PLASTICITY_BENCH_OUT=dir writes training_e2e.json).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-tiny")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--dec", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    from models import model_dir
    from plasticity._plasticity import TrainQueue
    from plasticity.training import config as tc, core, views

    torch.set_num_threads(a.threads)
    m = AutoModelForCausalLM.from_pretrained(model_dir(a.model), dtype=torch.float32).eval()
    names = [n for n, _ in m.named_parameters()]
    sel = views.select(names, ["all-linear"])
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    cfg = tc.from_dict({"enabled": True, "lr": 1e-6, "rank": 32, "replay_ratio": 0.0, "journal": "/dev/null"})
    tr = core.Trainer(m, sorted(sel), cfg, TrainQueue(10), threading.Lock())
    g = torch.Generator().manual_seed(0)
    ex = [{"id": str(i), "context": torch.randint(10, 4000, (a.ctx,), generator=g).tolist(),
           "decision": torch.randint(10, 4000, (a.dec,), generator=g).tolist()} for i in range(a.steps)]
    rows = []
    for name, fn in (("context-frozen", core.frozen_context_loss), ("full backprop", core.full_loss)):
        for e in ex[:2]:  # warm-up
            fn(m, e["context"], e["decision"])[0].backward()
        t0 = time.perf_counter()
        for e in ex:
            loss, n = fn(m, e["context"], e["decision"])
            loss.backward()  # fused Apollo steps inside
        dt = time.perf_counter() - t0
        rows.append((name, a.steps * a.dec / dt, a.steps * (a.ctx + a.dec) / dt, dt / a.steps * 1e3))
    print(f"model {a.model}, context {a.ctx} tokens, decision {a.dec} tokens, {a.threads} threads, fused Apollo rank 32")
    print(f"{'mode':16s} {'decision tok/s':>15s} {'all tok/s':>10s} {'ms/example':>11s}")
    for r in rows:
        print(f"{r[0]:16s} {r[1]:15.1f} {r[2]:10.1f} {r[3]:11.1f}")
    print(f"speed-up (decision tokens/s): {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
