#!/usr/bin/env python
"""Tokens/s of the served test model with steering off vs on, in one server run.

    .venv/bin/python scripts/bench_steering.py [--model DIR] [--requests 32] [--tokens 64] [--rounds 3]

Starts ONE vLLM CPU server (default compiled mode, float32) with the plasticity
plugins and a random vector on every layer, then runs interleaved rounds of
three workloads with the same prompts and concurrency:
  off  — no request steered;  half — every other request steered;  all — every request steered.
Reports the median generated tokens/s of each and the overhead vs off; unless
--no-vanilla, it first runs the same workload on vLLM *without* the plugin
(another server) and reports every mode's overhead against that too.
Outputs JSON to --out (default bench-out/steering.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    import numpy as np

    from plasticity.steering.files import save_gguf
    from vllm_server import VLLMServer
    import steering_support as ss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(Path.home() / ".cache/plasticity/models/qwen3-tiny"))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench-out/steering.json"))
    ap.add_argument("--no-vanilla", action="store_true",
                    help="skip the reference run of vLLM without the plugin (saves one server start)")
    args = ap.parse_args()

    cfgdir = Path(tempfile.mkdtemp(prefix="bench-steer-"))
    (cfgdir / "vectors").mkdir()
    hidden = json.loads((Path(args.model) / "config.json").read_text())
    nl, h = hidden["num_hidden_layers"], hidden["hidden_size"]
    rng = np.random.default_rng(0)
    save_gguf(cfgdir / "vectors" / "bench.gguf",
              {l: (rng.standard_normal(h) * 0.05).astype(np.float32) for l in range(nl)}, "bench")
    (cfgdir / "plasticity.toml").write_text('[steering]\nvectors_dir = "vectors"\n')
    prompts = [f"Request {i}: " + ss.PROMPTS[i % len(ss.PROMPTS)] for i in range(args.requests)]

    def one(i, steer):
        x = {"steer": "bench", "steer_scale": 1.0} if steer else None
        body = {"model": srv.model, "prompt": prompts[i], "max_tokens": args.tokens, "temperature": 0.0,
                "ignore_eos": True}
        if x:
            body["vllm_xargs"] = x
        code, out = ss.http(srv, "POST", "/v1/completions", body, key=None, timeout=600)
        assert code == 200, out
        return out["usage"]["completion_tokens"]

    def workload(mode):
        steer = {"off": lambda i: False, "half": lambda i: i % 2 == 0, "all": lambda i: True}[mode]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            n = sum(pool.map(lambda i: one(i, steer(i)), range(args.requests)))
        return n / (time.perf_counter() - t0)

    res: dict[str, list[float]] = {}
    if not args.no_vanilla:
        # Reference: the same workload on vLLM without the plugin (a separate
        # server, so these rounds cannot interleave with the others).
        srv = VLLMServer(args.model, dtype=args.dtype, env=ss.plain_env(), log_path=cfgdir / "vanilla.log")
        srv.start()
        try:
            workload("off")  # warm-up
            res["vanilla"] = []
            for r in range(args.rounds):
                res["vanilla"].append(workload("off"))
                print(f"round {r} vanilla {res['vanilla'][-1]:8.1f} tok/s", flush=True)
        finally:
            srv.stop()
    srv = VLLMServer(args.model, dtype=args.dtype, env=ss.plugin_env(cfgdir / "plasticity.toml"),
                     log_path=cfgdir / "server.log")
    srv.start()
    print(f"server up in {srv.startup_seconds:.0f} s (log {srv.log_path})", flush=True)
    try:
        workload("off")  # warm-up
        for m in ("off", "half", "all"):
            res[m] = []
        for r in range(args.rounds):
            for m in ("off", "half", "all"):
                res[m].append(workload(m))
                print(f"round {r} {m:4s} {res[m][-1]:8.1f} tok/s", flush=True)
    finally:
        srv.stop()
    med = {m: statistics.median(v) for m, v in res.items()}
    report = {"model": args.model, "dtype": args.dtype, "requests": args.requests, "concurrency": args.concurrency,
              "max_tokens": args.tokens, "rounds": args.rounds, "tok_per_s": res, "median": med,
              "overhead_pct": {m: 100 * (1 - med[m] / med["off"]) for m in ("half", "all")}}
    if "vanilla" in med:
        report["overhead_vs_vanilla_pct"] = {m: 100 * (1 - med[m] / med["vanilla"]) for m in ("off", "half", "all")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({"median_tok_per_s": med, "overhead_pct": report["overhead_pct"],
                      "overhead_vs_vanilla_pct": report.get("overhead_vs_vanilla_pct")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
