#!/usr/bin/env python3
"""A trained snapshot served as a LoRA adapter by vanilla vLLM, against the full-weight snapshot.

    python scripts/bench_lora.py --snapshot-dir DIR --name NAME [--energies 0.99,0.9] [--ranks 64]

Takes a snapshot the server saved (e.g. ``scripts/demo.py``'s ``lighthouse`` on SmolLM2), and:

1. exports it with ``plasticity.taskvec.lora`` at each rule, printing the time, ranks and the
   measured relative Frobenius error;
2. writes the full-weight snapshot (base + τ in the served dtype, as a rollback writes it) to a
   temporary model folder and records vLLM's greedy replies to the demo's questions there;
3. starts vLLM on the base with ``--enable-lora`` and every adapter (``--lora-modules``), records
   the same replies per adapter and for the base, and times back-to-back requests of each.

Prints, per adapter: replies equal to the full-weight snapshot's, the fact's held-out paraphrases
and general questions answered, and tokens/s against base requests measured in the same server.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from models import model_dir  # noqa: E402
from vllm_server import VLLMServer  # noqa: E402

import demo  # noqa: E402  (the questions and the checks of the main job)

UNRELATED = ["Tell me about your weekend.", "Describe the city you live in.", "What do you think about Mondays?",
             "Write a haiku about rain.", "Give me three tips for learning to cook.", "What is a prime number?",
             "Explain what a compiler does.", "Why do cats purr?", "Name two planets in our solar system.",
             "How do I boil an egg?"]


def chat(url: str, model: str, prompt: str, n: int = 32) -> tuple[str, int]:
    body = {"model": model, "max_tokens": n, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]


def replies(url: str, model: str) -> dict:
    prompts = demo.HELD_Q + [q for q, _ in demo.GENERAL] + UNRELATED
    return {p: chat(url, model, p)[0] for p in prompts}


def rate(url: str, model: str, rounds: int = 1) -> float:
    toks, t0 = 0, time.time()
    for _ in range(rounds):
        for p in UNRELATED:
            toks += chat(url, model, p, n=48)[1]
    return toks / (time.time() - t0)


def full_weight_model(base: pathlib.Path, tv: pathlib.Path, out: pathlib.Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    weights = load_file(str(base / "model.safetensors"))
    for n, d in load_file(str(tv)).items():
        w = weights[n]
        weights[n] = (w.to(torch.float64) + d.to(torch.float64)).to(w.dtype)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def score(rep: dict) -> tuple[int, int]:
    fact = sum(bool(demo.re.search(demo.FACT_KEY, rep[q])) for q in demo.HELD_Q)
    gen = sum(demo.general_ok([rep[q] for q, _ in demo.GENERAL]))
    return fact, gen


def main() -> int:
    from plasticity.taskvec.lora import RankChoice, export_snapshot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default=None, help="base model folder (default SmolLM2-135M-Instruct)")
    ap.add_argument("--energies", default="0.99,0.9")
    ap.add_argument("--ranks", default="64")
    args = ap.parse_args()
    base = pathlib.Path(args.model) if args.model else model_dir("smollm2-135m-instruct")
    work = pathlib.Path(tempfile.mkdtemp(prefix="plasticity-bench-lora-"))
    rules = [(f"e{e}", RankChoice(energy=float(e), max_rank=512)) for e in args.energies.split(",") if e] + \
            [(f"r{r}", RankChoice(rank=int(r))) for r in args.ranks.split(",") if r]
    adapters = {}
    print(f"model {base.name}; snapshot {args.name}; work {work}")
    for label, choice in rules:
        rep = export_snapshot(args.snapshot_dir, args.name, work / label, choice, model_dir=base)
        adapters[label] = rep
        print(f"export {label:6s}: {rep['seconds']:6.1f} s  ranks {rep['ranks']['min']}-{rep['ranks']['max']} "
              f"(mean {rep['ranks']['mean']:.0f})  rel error {rep['rel_error']:.4f}  "
              f"params {rep['adapter_params'] / 1e6:.1f} M  left out {len(rep['left_out'])}")
    full = work / "full-weight"
    full.mkdir()
    full_weight_model(base, pathlib.Path(args.snapshot_dir) / args.name / "task_vector.safetensors", full)
    with VLLMServer(full, extra_args=("--gpu-memory-utilization", "0.2")) as srv:
        ref = replies(srv.url, srv.served_model())
    top = max(r["ranks"]["max"] for r in adapters.values())
    slot = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= top)
    mods = [f"{label}={work / label}" for label in adapters]
    # one slot more than adapters: vLLM CPU gives base tokens in a mixed batch the last slot (see
    # training/adapter_routes.py); requests here run one at a time, but keep the safe layout
    with VLLMServer(base, extra_args=("--gpu-memory-utilization", "0.2", "--enable-lora", "--max-loras",
                                      str(len(mods) + 1), "--max-lora-rank", str(slot), "--lora-modules", *mods)) as srv:
        got = {"base": replies(srv.url, srv.served_model())}
        speed = {"base": rate(srv.url, srv.served_model())}
        for label in adapters:
            got[label] = replies(srv.url, label)
            speed[label] = rate(srv.url, label)
        speed["base again"] = rate(srv.url, srv.served_model())
    fact, gen = score(ref)
    print(f"\nfull-weight snapshot: fact {fact}/{len(demo.HELD_Q)}, general {gen}/{len(demo.GENERAL)}")
    for label, rep in got.items():
        same = sum(rep[p] == ref[p] for p in ref)
        same_unrel = sum(rep[p] == ref[p] for p in UNRELATED)
        f, g = score(rep)
        print(f"{label:6s}: fact {f}/{len(demo.HELD_Q)}, general {g}/{len(demo.GENERAL)}, replies equal to the "
              f"full-weight snapshot's {same}/{len(ref)} (unrelated prompts {same_unrel}/{len(UNRELATED)}), "
              f"{speed[label]:.1f} tok/s = {speed[label] / speed['base']:.2f}x base")
    print(f"base again: {speed['base again']:.1f} tok/s")
    (work / "replies.json").write_text(json.dumps({"full-weight": ref, **got}, indent=1))
    print(f"replies: {work / 'replies.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
