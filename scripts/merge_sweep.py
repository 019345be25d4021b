"""Do two behaviours trained separately from the base survive a merge? A sweep on the local model.

For each configuration: train behaviour A from the base (the experiments' Rig: the server's
Trainer, Apollo, replay), keep τA = W − W_base; the same for B from the base; then apply merges
(task arithmetic and TIES over a grid of λ, density and weights, through plasticity.taskvec, i.e.
the Rust core) and run both behaviours' held-out tests on each merged model.

    .venv/bin/python scripts/merge_sweep.py CONFIGS.json [--only I] [--jobs N] [--out results.jsonl]

CONFIGS.json is a list of objects: ``pair`` [A, B] (shipped behaviours), ``lr``, ``steps``,
optional ``rank`` (32), ``replay`` (0.75), ``per_step`` (1), ``modules`` (["all-linear"]),
``full`` (full backprop instead of context-frozen), ``seeds`` (a seed for the trainers: A gets
10·s, B 10·s + 1), ``controls`` (N prompts of each other behaviour → the base model's own greedy
reply, mixed into each training set; ``partner`` also takes them from the other behaviour of the
pair), and the merge grid: ``lams`` (task arithmetic λ), ``dens`` × ``ties_lams`` (TIES), ``wts``
(list of [wA, wB]). Each configuration runs in its own process on one thread (``--jobs`` at once);
one JSON line per configuration. The results of the sweeps run for the docs are summarised in
docs/task-vectors.md ("Merging behaviours on the tiny model").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

BEHAVIOURS = ("greeting", "format-rule", "ticket-reply", "refusal")


def run(cfg: dict) -> dict:
    import torch

    from plasticity.eval.behaviour import behaviour_files
    from plasticity.experiments import common as C
    from plasticity.taskvec import merge as M
    from plasticity.training import core

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    md = C.resolve_model(os.environ.get("MODEL_DIR"), "qwen3-tiny")
    held, rep = C.corpus_paths(md)
    rig = C.Rig(md, heldout=held, replay=rep, modules=tuple(cfg.get("modules", ["all-linear"])), heldout_tokens=2048)
    A, B = cfg["pair"]
    t0 = time.time()

    def data(name):
        ex = rig.behaviour_examples(name, "train")
        if not cfg.get("controls"):
            return ex
        others = [b for b in BEHAVIOURS if b != name and (cfg.get("partner") or b not in (A, B))]
        for o in others:
            rows = [json.loads(l) for l in behaviour_files(o)["train"].read_text().splitlines() if l.strip()]
            for i, r in enumerate(rows[: cfg["controls"]]):
                ids = rig.chat_ids(r["context"])
                with torch.no_grad():
                    out = rig.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
                ex.append(C.Example(f"ctl-{name}-{o}-{i}", ids, out[0, len(ids):].tolist()))
        random.Random(1).shuffle(ex)
        return ex

    def tests():
        s = {b: rig.behaviour(b, max_controls=4, max_nll=8) for b in (A, B)}
        return {b: {"pass": s[b]["heldout_pass"], "nll": round(s[b]["decision_nll"], 3),
                    "control_pass": s[b]["control_pass"], "sample": (s[b]["sample"] or "")[:40]} for b in (A, B)}

    taus, res = {}, {"cfg": cfg}
    for name in (A, B):
        rig.reset()
        ex = data(name)
        seed = {"seed": cfg["seeds"] * 10 + (name == B)} if cfg.get("seeds") else {}
        tr = rig.trainer(lr=cfg["lr"], rank=cfg.get("rank", 32), replay_ratio=cfg.get("replay", 0.75), **seed)
        if cfg.get("full"):
            with C.loss_function(core.full_loss):
                rig.teach(tr, ex, cfg["steps"], per_step=cfg.get("per_step", 1))
        else:
            rig.teach(tr, ex, cfg["steps"], per_step=cfg.get("per_step", 1))
        rig.release()
        taus[name] = {n: p.detach().double() - rig._base[n].double() for n, p in rig.params.items()}
        res[f"only_{name}"] = {**tests(), "ppl": round(rig.ppl(), 1)}
    na = sum(float(t.norm() ** 2) for t in taus[A].values()) ** 0.5
    nb = sum(float(t.norm() ** 2) for t in taus[B].values()) ** 0.5
    dot = sum(float((taus[A][n] * taus[B][n]).sum()) for n in taus[A])
    res["norms"] = {"A": round(na, 3), "B": round(nb, 3), "cosine": round(dot / (na * nb), 4)}
    wts = cfg.get("wts", [[1, 1]])
    merges = ([("task_arithmetic", lam, None, w) for w in wts for lam in cfg.get("lams", [0.5, 0.7, 1.0])]
              + [("ties", lam, d, w) for w in wts for d in cfg.get("dens", [0.2, 0.5])
                 for lam in cfg.get("ties_lams", [1.0, 1.5])])
    res["merges"] = []
    for method, lam, d, w in merges:
        rig.reset()
        with torch.no_grad():
            for n, p in rig.params.items():
                ds = [taus[A][n], taus[B][n]]
                m = M.task_arithmetic(ds, w, lam) if method == "task_arithmetic" else M.ties(ds, w, d, lam)
                p.copy_((rig._base[n].double() + m.double()).to(p.dtype))
        res["merges"].append({"method": method, "lambda": lam, "density": d, "weights": w, **tests()})
    rig.reset()
    res["seconds"] = round(time.time() - t0)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs")
    ap.add_argument("--only", type=int, default=None, help="run configuration I in this process")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None, help="append the JSON lines here (default: stdout)")
    a = ap.parse_args(argv)
    cfgs = json.loads(Path(a.configs).read_text())
    if a.only is not None:
        print(json.dumps(run(cfgs[a.only])), flush=True)
        return 0
    procs, lines = {}, []
    todo = list(range(len(cfgs)))
    while todo or procs:
        while todo and len(procs) < a.jobs:
            i = todo.pop(0)
            procs[i] = subprocess.Popen([sys.executable, __file__, a.configs, "--only", str(i)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for i, p in list(procs.items()):
            if p.poll() is not None:
                out = p.stdout.read().strip()
                lines.append(out or json.dumps({"cfg": cfgs[i], "error": f"exit {p.returncode}"}))
                del procs[i]
                best = json.loads(lines[-1])
                if "merges" in best:
                    A, B = cfgs[i]["pair"]
                    top = max(best["merges"], key=lambda m: min(m[A]["pass"], m[B]["pass"]))
                    print(f"[{i}] {A}+{B}: best merge {top['method']} λ {top['lambda']} density {top['density']} "
                          f"weights {top['weights']}: {top[A]['pass']:.2f} / {top[B]['pass']:.2f}", file=sys.stderr)
        time.sleep(1)
    text = "\n".join(lines) + "\n"
    if a.out:
        with open(a.out, "a") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
