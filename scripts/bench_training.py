#!/usr/bin/env python3
"""Online-training speed and memory against plain transformers + torch AdamW, in one run.

    .venv/bin/python scripts/bench_training.py [--model smollm2-135m-instruct] [--threads 2]
        [--batch 4] [--ctx 64] [--dec 64] [--steps 6]

Each mode runs in its own fresh process on the same batches (``--batch`` sequences of ``--ctx``
context + ``--dec`` decision tokens, the decision tokens are what is trained) and prints trained
tokens/s, seconds per step, optimizer state and the peak RSS above the loaded model:

- ``ours``: plasticity's ``Trainer.step`` exactly as the server runs it (context-frozen loss,
  batched, fused Apollo stepping each weight as its gradient completes, atomic steps);
- ``ours-nonatomic``: the same without the undo log (``atomic_steps = false``);
- ``torch-adamw``: what a user would otherwise write: full backprop through context and decision
  (loss on the decision tokens only), then ``torch.optim.AdamW`` (fused where torch allows).

The ratio line compares ours with the torch reference measured in the same run. The in-server
rates (idle and under a client) are in ``GET /v1/training/status`` (``tokens_per_s``) and
tests/test_training_serving.py. Never a timed test: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


class PeakRSS:
    """Samples this process's RSS every 5 ms; ``peak`` is the largest seen since ``start``."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def start(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak - self.base


def batches(a, vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(a.steps + 1):  # one warm-up step
        out.append([(torch.randint(10, vocab - 10, (a.ctx,), generator=g).tolist(),
                     torch.randint(10, vocab - 10, (a.dec,), generator=g).tolist()) for _ in range(a.batch)])
    return out


def run_mode(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from models import model_dir

    torch.set_num_threads(a.threads)
    m = AutoModelForCausalLM.from_pretrained(model_dir(a.model), dtype=torch.float32).eval()
    from plasticity.training import views

    sel = sorted(views.select([n for n, _ in m.named_parameters()], ["all-linear"]))
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    params = [p for n, p in m.named_parameters() if n in sel]
    data = batches(a, m.config.vocab_size)
    rss = PeakRSS().start()
    times, state_bytes, extra = [], 0, {}
    if a.mode.startswith("ours"):
        from plasticity._plasticity import TrainQueue
        from plasticity.training import config as tc, core

        cfg = tc.from_dict({"enabled": True, "lr": 1e-6, "rank": a.rank, "replay_ratio": 0.0,
                            "journal": "/dev/null", "threads": a.threads,
                            "atomic_steps": a.mode == "ours"})
        tr = core.Trainer(m, sel, cfg, TrainQueue(10), threading.Lock())
        prof0 = {}
        for i, b in enumerate(data):
            t0 = time.perf_counter()
            tr.step([{"id": f"{i}-{j}", "context": c, "decision": d} for j, (c, d) in enumerate(b)])
            if i:
                times.append(time.perf_counter() - t0)
            else:
                prof0 = dict(tr.status()["profile_s"])
        st = tr.status()
        extra["profile_ms_per_step"] = {k: round((v - prof0.get(k, 0.0)) / a.steps * 1e3, 1)
                                        for k, v in st["profile_s"].items()}
        state_bytes = st["optimizer_state_bytes"]
        extra.update(undo_bytes_peak=st["undo_bytes_peak"], activation_bytes_peak=st["activation_bytes_peak"],
                     batched=tr._batchable)
    else:
        try:
            opt = torch.optim.AdamW(params, lr=1e-6, fused=True)
            extra["fused"] = True
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(params, lr=1e-6, foreach=True)
            extra["fused"] = False
        for i, b in enumerate(data):
            t0 = time.perf_counter()
            ids = torch.tensor([c + d for c, d in b])
            labels = ids.clone()
            labels[:, :a.ctx] = -100  # train the decision tokens, as ours does
            m(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                          if isinstance(t, torch.Tensor))
    extra_rss = rss.stop()
    times.sort()
    med = times[len(times) // 2]
    return {"mode": a.mode, "s_per_step": med, "trained_tok_s": a.batch * a.dec / med,
            "all_tok_s": a.batch * (a.ctx + a.dec) / med, "optimizer_state_bytes": state_bytes,
            "peak_extra_rss": extra_rss, "trainable_params": sum(p.numel() for p in params), **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--dec", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--modes", default="ours,ours-nonatomic,torch-adamw")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one mode in this process
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a)))
        return
    rows = []
    for mode in a.modes.split(","):
        argv = [sys.executable, __file__, "--mode", mode] + [
            f"--{k}={getattr(a, k)}" for k in ("model", "threads", "batch", "ctx", "dec", "steps", "rank")]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {mode}: done", file=sys.stderr)
    print(f"model {a.model}, {a.threads} threads, batch {a.batch} x ({a.ctx} context + {a.dec} trained tokens), "
          f"median of {a.steps} steps after one warm-up, Apollo rank {a.rank}")
    print(f"{'mode':16s} {'s/step':>7s} {'trained tok/s':>14s} {'all tok/s':>10s} {'opt state MB':>13s} "
          f"{'peak extra RSS MB':>18s}")
    for r in rows:
        print(f"{r['mode']:16s} {r['s_per_step']:7.2f} {r['trained_tok_s']:14.1f} {r['all_tok_s']:10.1f} "
              f"{r['optimizer_state_bytes'] / 1e6:13.1f} {r['peak_extra_rss'] / 1e6:18.1f}")
    by = {r["mode"]: r for r in rows}
    ref = by.get("torch-adamw")
    for mode in ("ours", "ours-nonatomic"):
        if ref and mode in by:
            r = by[mode]
            print(f"{mode} / torch AdamW: {r['trained_tok_s'] / ref['trained_tok_s']:.2f}x trained tokens/s, "
                  f"{r['optimizer_state_bytes'] / ref['optimizer_state_bytes']:.3f}x optimizer state, "
                  f"{r['peak_extra_rss'] / ref['peak_extra_rss']:.2f}x peak extra RSS")
    for r in rows:
        extra = {k: v for k, v in r.items() if k in ("undo_bytes_peak", "activation_bytes_peak", "batched", "fused",
                                                     "profile_ms_per_step")}
        if extra:
            print(f"{r['mode']}: {extra}")


if __name__ == "__main__":
    main()
