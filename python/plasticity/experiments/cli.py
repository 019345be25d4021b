"""``plasticity experiment NAME [--model DIR|NAME] [--quick] [--out DIR] [--seed N | --seeds 0,1,2 [--jobs N]]``
and ``plasticity experiment list``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import EXPERIMENTS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("experiment", help="run one experiment end to end (report.md, results.json, table, plots)",
                       description="Run one experiment end to end: training through the server's code path "
                                   "(Trainer, context-frozen, fused Apollo) on a local model, then report.md, "
                                   "results.json, table.md and PNG plots in --out. 'list' shows the experiments.")
    p.add_argument("name", choices=["list", *EXPERIMENTS], metavar="NAME",
                   help="list | " + " | ".join(EXPERIMENTS))
    p.add_argument("--model", default=None, help="model folder or the name of a locally built model (default: "
                                                  "smollm2-135m-instruct; --quick: qwen3-tiny; gdn-state: qwen3_5-tiny)")
    p.add_argument("--quick", action="store_true", help="a few training steps on the tiny model: a smoke test of the "
                                                         "whole pipeline")
    p.add_argument("--out", default=None, help="output folder (default experiments-out/NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2 or 0-2: each in OUT/seed-N (done ones are "
                                                 "kept), then the mean and spread over them in OUT/report.md")
    p.add_argument("--jobs", type=int, default=1, help="with --seeds: seeds run side by side (default 1)")
    p.add_argument("--heldout", default=None, help="held-out general text (.jsonl/.txt; default: the local corpus)")
    p.add_argument("--replay", default=None, help="replay text (.jsonl/.txt; default: the local corpus's train.txt)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=main)
    return p


def namespace(**kw) -> argparse.Namespace:
    d = dict(name=None, model=None, quick=False, out=None, seed=0, seeds=None, jobs=1, heldout=None, replay=None,
             threads=1, no_progress=False)
    d.update(kw)
    return argparse.Namespace(**d)


def run_one(name: str, args: argparse.Namespace) -> dict:
    if name not in EXPERIMENTS:
        raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    mod = importlib.import_module(f"plasticity.experiments.{EXPERIMENTS[name][0]}")
    return mod.run(args)


def main(args: argparse.Namespace) -> int:
    if args.name == "list":
        w = max(len(n) for n in EXPERIMENTS)
        for n, (_, desc) in EXPERIMENTS.items():
            print(f"{n:<{w}}  {desc}")
        return 0
    out = args.out or f"experiments-out/{args.name}"
    if getattr(args, "seeds", None):
        from .seeds import parse_seeds, run_seeds

        summary = run_seeds(args.name, args, parse_seeds(args.seeds), jobs=args.jobs)
        for seed, answer in summary["answers"].items():
            print(f"seed {seed}: {answer}")
        print(f"report over {len(summary['seeds'])} seeds: {out}/report.md")
        return 0
    res = run_one(args.name, args)
    print(res["answer"])
    print(f"report: {out}/report.md")
    if res.get("sanity_problems"):
        print("sanity problems: " + "; ".join(res["sanity_problems"]), file=sys.stderr)
        return 1
    return 0
