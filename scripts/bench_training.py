#!/usr/bin/env python3
"""Online-training speed and memory against plain transformers + torch AdamW, in one run.

    .venv/bin/python scripts/bench_training.py [--model smollm2-135m-instruct] [--threads 2]
        [--batch 4] [--ctx 64] [--dec 64] [--steps 6] [--autocast off|bf16]
        [--modes ours,ours-nonatomic,torch-adamw,server] [--tp 2]

Every mode trains on the same batches: ``--batch`` windows of the local English corpus (Python's
documentation, scripts/build_test_models.py), ``--ctx`` context + ``--dec`` decision tokens each;
the decision tokens are what is trained; ``--autocast bf16`` runs every mode's forward and backward
matmuls in bfloat16 (``[training] autocast``; the torch reference under the same
``torch.autocast``). It prints trained tokens/s, seconds per step, optimizer
state and the peak RSS above the loaded model:

- ``ours``: plasticity's ``Trainer.step`` exactly as the server runs it (context-frozen loss,
  batched, fused Apollo stepping a layer's worth of gradients under one lock, atomic steps),
  offline, in a fresh process;
- ``ours-nonatomic``: the same without the undo log (``atomic_steps = false``);
- ``torch-adamw``: what a user would otherwise write: full backprop through context and decision
  (loss on the decision tokens only), then ``torch.optim.AdamW`` (fused where torch allows);
- ``server``: ours inside ``vllm`` (the OpenAI server with the plasticity plugins, its default
  ``cpus = "auto"``/``idle_cpus = "all"`` and ``--threads`` training threads): first idle (no
  client: training widens to every core), then under a client that keeps asking back to back
  (``serving_duty = 0.5``: training stays off serving's core and takes half of wall time). It prints the training thread's own rate
  (``tokens_per_s`` of the status: steps' time only), its share of wall time (the duty cycle),
  the serving tokens/s of that client alone and while training, and the worker's peak RSS
  growth.

- ``--tp N`` adds ``ours-tpN``: the same ``Trainer.step`` on N tensor-parallel ranks (N processes,
  ``--threads / N`` threads each, a real gloo group), each holding its shards of the model cut as
  vLLM cuts them (``training/tensor_parallel.py``). It prints the seconds per step against ours
  at TP=1 and the bytes each rank sent per step: the view's collectives (activations) and
  Apollo's sums. The model's head counts must divide by N (SmolLM2's 9 heads do not: use
  ``--model qwen3-tiny``).

Ratio lines compare with the torch reference and with ours offline measured in the same run.
Never a timed test: shared machines are noisy.
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


def batches(a, tokenizer) -> list[list[tuple[list[int], list[int]]]]:
    """``steps + 1`` batches (one warm-up) of consecutive corpus windows: (context ids, decision ids)."""
    from models import heldout_path

    text = (heldout_path().parent / "train.txt").read_text(encoding="utf-8")
    ids = tokenizer(text[:400_000], add_special_tokens=False)["input_ids"]
    w, out, pos = a.ctx + a.dec, [], 0
    for _ in range(a.steps + 1):
        b = []
        for _ in range(a.batch):
            b.append((ids[pos: pos + a.ctx], ids[pos + a.ctx: pos + w]))
            pos += w
        out.append(b)
    return out


def run_mode(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from models import model_dir

    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model_dir(a.model), dtype=torch.float32).eval()
    from plasticity.training import views

    sel = sorted(views.select([n for n, _ in m.named_parameters()], ["all-linear"]))
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    params = [p for n, p in m.named_parameters() if n in sel]
    data = batches(a, AutoTokenizer.from_pretrained(model_dir(a.model)))
    tp = None
    if a.mode.startswith("ours-tp"):
        m, tp = _shard_model(m, a)
    rss = PeakRSS().start()
    times, state_bytes, extra = [], 0, {}
    if a.mode.startswith("ours"):
        from plasticity.training import tensor_parallel as tpv
        from plasticity.training.queue import ExampleQueue
        from plasticity.training import config as tc, core

        cfg = tc.from_dict({"enabled": True, "lr": 1e-6, "rank": a.rank, "replay_ratio": 0.0,
                            "journal": "/dev/null", "threads": a.threads, "autocast": a.autocast,
                            "atomic_steps": a.mode == "ours"})
        tr = core.Trainer(m, sel, cfg, ExampleQueue(10), threading.Lock(), tp=tp)
        prof0 = {}
        for i, b in enumerate(data):
            t0 = time.perf_counter()
            tr.step([{"id": f"{i}-{j}", "context": c, "decision": d} for j, (c, d) in enumerate(b)])
            if i:
                times.append(time.perf_counter() - t0)
            else:
                prof0 = dict(tr.status()["profile_s"])
                view0, opt0 = tpv.sent_bytes, getattr(tr.opt, "reduced_bytes", 0)
        if tp is not None:
            extra["view_bytes_per_step"] = (tpv.sent_bytes - view0) / a.steps
            extra["apollo_bytes_per_step"] = (tr.opt.reduced_bytes - opt0) / a.steps
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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
                loss = m(input_ids=ids, labels=labels).loss
            loss.backward()
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


def _shard_model(m, a):
    """This rank's tensor-parallel view of ``m`` (``--mode ours-tpN``), in a gloo group of ``--tp``."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from plasticity.training import tensor_parallel as tpv

    dist.init_process_group("gloo", init_method=f"file://{a.tp_init}", rank=a.tp_rank, world_size=a.tp)
    group = dist.new_group(list(range(a.tp)), backend="gloo")
    local = AutoModelForCausalLM.from_config(tpv.local_config(m.config, a.tp), dtype=torch.float32).eval()
    local.load_state_dict(tpv.shard_state_dict(m.state_dict(), m.config, a.tp_rank, a.tp), strict=True)
    tpv.parallelize(local, m.config.vocab_size, group)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    for n, p in local.named_parameters():
        p.requires_grad_(n in names)
    return local, tpv.Rank(rank=a.tp_rank, size=a.tp, group=group)


def run_tp(a) -> dict:
    """``ours-tpN``: N processes, one rank each; rank 0's row, with the slowest rank's s/step."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        argv = [sys.executable, __file__, "--mode", f"ours-tp{a.tp}", f"--tp={a.tp}", f"--tp-init={d}/init",
                f"--threads={max(1, a.threads // a.tp)}"] + [
            f"--{k}={getattr(a, k)}" for k in ("model", "batch", "ctx", "dec", "steps", "rank", "autocast")]
        procs = [subprocess.Popen(argv + [f"--tp-rank={r}"], stdout=subprocess.PIPE, text=True) for r in range(a.tp)]
        rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    row = dict(rows[0])
    row["s_per_step"] = max(r["s_per_step"] for r in rows)
    for k in ("trained_tok_s", "all_tok_s"):
        row[k] = rows[0][k] * rows[0]["s_per_step"] / row["s_per_step"]
    return row


SERVER_CONFIG = """[training]
enabled = true
lr = 1e-6                # speed, not learning: keep the served model as it is
rank = {rank}
replay_ratio = 0.0       # the batches are exactly the submitted examples
batch_size = {batch}
threads = {threads}
autocast = "{autocast}"
serving_duty = 0.5       # under a client: training takes at most half of wall time
journal = "journal.jsonl"
max_decision_tokens = {max_dec}
max_example_tokens = {max_ex}
"""


class Client:
    """Asks the server for ``n`` greedy tokens back to back; ``tokens_between(t0, t1)`` counts the
    tokens of the requests that finished in that window."""

    def __init__(self, srv, n: int = 32):
        self.srv, self.n, self.done, self.failed = srv, n, [], 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import training_support as ts

        body = {"model": self.srv.model, "prompt": "The history of the lighthouse begins", "max_tokens": self.n,
                "temperature": 0.0, "ignore_eos": True}
        while not self._stop.is_set():
            code, out = ts.request(self.srv, "POST", "/v1/completions", body)
            if code == 200:
                self.done.append((time.monotonic(), out["usage"]["completion_tokens"]))
            else:
                self.failed += 1

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(120)

    def tokens_between(self, t0: float, t1: float) -> int:
        return sum(n for t, n in self.done if t0 < t <= t1)


def _worker(srv):
    """The engine worker that holds the model: the largest process under the server."""
    import psutil

    procs = [psutil.Process(srv.proc.pid)]
    procs += procs[0].children(recursive=True)
    return max((p for p in procs if p.is_running()), key=lambda p: p.memory_info().rss)


class WorkerPeakRSS:
    """The worker's peak RSS from the kernel's high-water mark (``VmHWM``), reset at ``start`` by
    writing 5 to ``clear_refs``: no sampling, so this script takes no CPU from the training it
    measures. Falls back to sampling on every status poll when the reset is not allowed."""

    def __init__(self, proc):
        self.proc = proc
        self.base = proc.memory_info().rss
        try:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            self.hwm = True
        except OSError:
            self.hwm, self.peak = False, self.base

    def sample(self):
        if not self.hwm:
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def extra(self) -> int:
        if self.hwm:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 - self.base
        return self.peak - self.base


# Status polls cost CPU in all three server processes (each is an RPC to the worker); every
# 50 ms they took about a tenth of the 2 cores that training was being measured on. The rates
# come from the status's own training-time counters, so a coarse poll loses no precision.
POLL_S = 0.5


def run_server(a) -> list[dict]:
    import tempfile

    from transformers import AutoTokenizer

    import training_support as ts
    from models import model_dir
    from vllm_server import VLLMServer

    d = model_dir(a.model)
    tok = AutoTokenizer.from_pretrained(d)
    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    cfg = root / "plasticity.toml"
    cfg.write_text(SERVER_CONFIG.format(rank=a.rank, batch=a.batch, threads=a.threads, autocast=a.autocast,
                                        max_dec=a.dec + 16,
                                        max_ex=a.ctx + a.dec + 32))
    rows = []
    srv = VLLMServer(d, env=ts.plugin_env(cfg), extra_args=("--api-key", ts.API_KEY), log_path=root / "server.log")
    with srv:
        print(f"  server healthy after {srv.startup_seconds:.0f} s (log {srv.log_path})", file=sys.stderr)
        for phase in ("idle", "busy"):
            client = Client(srv).start() if phase == "busy" else None
            serve_alone = None
            if client:
                time.sleep(5)  # warm
                t0 = time.monotonic()
                time.sleep(30)
                serve_alone = client.tokens_between(t0, time.monotonic()) / (time.monotonic() - t0)
            st0 = ts.status(srv)
            examples = [{"context": tok.decode(c), "decision": tok.decode(dd), "eos": False}
                        for b in batches(a, tok) for c, dd in b]
            code, out = ts.request(srv, "POST", "/v1/training/examples", {"examples": examples})
            assert code == 202, out
            rss = WorkerPeakRSS(_worker(srv))
            first = last = None  # (status, monotonic time) after the warm-up step and after the last step
            deadline = time.monotonic() + 1800
            while last is None:
                rss.sample()
                st = ts.status(srv)
                now = time.monotonic()
                if first is None and st["step"] >= st0["step"] + 1:
                    first = (st, now)
                if st["step"] >= st0["step"] + a.steps + 1:
                    last = (st, now)
                if now > deadline:
                    raise SystemExit(f"server training did not finish: {st}")
                time.sleep(POLL_S)
            if client:
                client.stop()
            (s1, t1), (s2, t2) = first, last
            steps = s2["step"] - s1["step"]
            train_s = s2["train_seconds"] - s1["train_seconds"]
            row = {"mode": f"server-{phase}", "s_per_step": train_s / steps,
                   "trained_tok_s": (s2["train_tokens"] - s1["train_tokens"]) / train_s,
                   "wall_share": train_s / (t2 - t1), "wall_s_per_step": (t2 - t1) / steps,
                   "optimizer_state_bytes": s2["optimizer_state_bytes"], "peak_extra_rss": rss.extra(),
                   "profile_s_per_step": {k: round((v - s1["profile_s"].get(k, 0.0)) / steps, 3)
                                          for k, v in s2["profile_s"].items()},
                   "lock_acquisitions_per_step": (s2["lock_acquisitions"] - s1["lock_acquisitions"]) / steps,
                   "training_cpus": s2.get("cpus"), "training_threads": s2.get("threads")}
            row["all_tok_s"] = row["trained_tok_s"] * (a.ctx + a.dec) / a.dec
            if client:
                row["serving_tok_s_alone"] = serve_alone
                row["serving_tok_s_training"] = client.tokens_between(t1, t2) / (t2 - t1)
                row["client_failures"] = client.failed
            rows.append(row)
            print(f"  server-{phase}: done", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--dec", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--autocast", choices=("off", "bf16"), default="off")
    ap.add_argument("--modes", default="ours,ours-nonatomic,torch-adamw,server")
    ap.add_argument("--tp", type=int, default=1, help="also train on this many tensor-parallel ranks")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one mode in this process
    ap.add_argument("--tp-rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tp-init", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a)), flush=True)
        if a.mode.startswith("ours-tp"):
            os._exit(0)  # gloo's file-store teardown can abort after the result is printed
        return
    rows = []
    for mode in a.modes.split(","):
        if mode == "server":
            rows += run_server(a)
            continue
        argv = [sys.executable, __file__, "--mode", mode] + [
            f"--{k}={getattr(a, k)}" for k in ("model", "threads", "batch", "ctx", "dec", "steps", "rank", "autocast")]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {mode}: done", file=sys.stderr)
    if a.tp > 1:
        rows.append(run_tp(a))
    print(f"model {a.model}, {a.threads} threads, batch {a.batch} x ({a.ctx} context + {a.dec} trained tokens), "
          f"median of {a.steps} steps after one warm-up, Apollo rank {a.rank}, autocast {a.autocast}")
    print(f"{'mode':16s} {'s/step':>7s} {'trained tok/s':>14s} {'all tok/s':>10s} {'opt state MB':>13s} "
          f"{'peak extra RSS MB':>18s}")
    for r in rows:
        print(f"{r['mode']:16s} {r['s_per_step']:7.2f} {r['trained_tok_s']:14.1f} {r['all_tok_s']:10.1f} "
              f"{r['optimizer_state_bytes'] / 1e6:13.1f} {r['peak_extra_rss'] / 1e6:18.1f}")
    by = {r["mode"]: r for r in rows}
    ref = by.get("torch-adamw")
    offline = by.get("ours")
    for mode in ("server-idle", "server-busy"):
        if mode in by:
            r = by[mode]
            line = (f"{mode}: training thread {r['trained_tok_s']:.1f} trained tok/s"
                    + (f" = {r['trained_tok_s'] / offline['trained_tok_s']:.2f}x ours offline" if offline else "")
                    + f", {100 * r['wall_share']:.0f}% of wall time")
            if "serving_tok_s_alone" in r:
                line += (f"; serving {r['serving_tok_s_training']:.1f} tok/s while training vs "
                         f"{r['serving_tok_s_alone']:.1f} alone = {r['serving_tok_s_training'] / r['serving_tok_s_alone']:.2f}x"
                         f" ({r['client_failures']} failed requests)")
            print(line)
    for mode in ("ours", "ours-nonatomic"):
        if ref and mode in by:
            r = by[mode]
            print(f"{mode} / torch AdamW: {r['trained_tok_s'] / ref['trained_tok_s']:.2f}x trained tokens/s, "
                  f"{r['optimizer_state_bytes'] / ref['optimizer_state_bytes']:.3f}x optimizer state, "
                  f"{r['peak_extra_rss'] / ref['peak_extra_rss']:.2f}x peak extra RSS")
    tp_row = by.get(f"ours-tp{a.tp}")
    if tp_row and offline:
        print(f"ours-tp{a.tp} / ours (TP=1): {offline['s_per_step'] / tp_row['s_per_step']:.2f}x speed "
              f"({tp_row['s_per_step']:.3f} vs {offline['s_per_step']:.3f} s/step); per rank and step "
              f"{tp_row['view_bytes_per_step']:,.0f} bytes in the view's collectives and "
              f"{tp_row['apollo_bytes_per_step']:,.0f} in Apollo's sums; optimizer state per rank "
              f"{tp_row['optimizer_state_bytes'] / offline['optimizer_state_bytes']:.2f}x TP=1's")
    for r in rows:
        extra = {k: v for k, v in r.items() if k in ("undo_bytes_peak", "activation_bytes_peak", "batched", "fused",
                                                     "profile_ms_per_step", "profile_s_per_step",
                                                     "lock_acquisitions_per_step", "training_cpus",
                                                     "training_threads")}
        if extra:
            print(f"{r['mode']}: {extra}")


if __name__ == "__main__":
    main()
