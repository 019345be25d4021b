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
(list of [wA, wB]). Round 4 added: ``anchors`` (N generic chat questions about Python → the base
model's own greedy reply, the same set mixed into A's and B's training: chat self-distillation),
``negatives`` (N near-miss prompts of the behaviour's own class → the base model's reply, e.g.
"What is the name of the mail server?" for refusal), ``null`` (also train a run on the anchors /
negatives and replay alone, τ0, and report cos(τA, τ0), cos(τB, τ0): the share of each task vector
that is not the behaviour), ``relative`` (with ``null``: also every merge relative to the replay-only run, base + τ0 +
merge(τA − τ0, τB − τ0)), ``self_replay`` (replay the base model's own sampled continuations of
the corpus windows instead of the corpus text), ``cross`` (always reported: the share of the other behaviour's held-out
prompts that τ alone answers with its own reply) and ``model`` (a model folder; default
``$MODEL_DIR``, else the local qwen3-tiny). Each configuration runs in its own process on one thread
(``--jobs`` at once); one JSON line per configuration. The results of the sweeps run for the docs are summarised in
docs/task-vectors.md ("Merging behaviours on the tiny model").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

BEHAVIOURS = ("greeting", "format-rule", "ticket-reply", "refusal")

# Near misses of each behaviour's own class (not its test controls): the reply must stay the base model's.
NEGATIVES = {
    "ticket-reply": [t.format(x=x) for x in ("build", "release", "review", "deployment", "migration", "order",
                                             "package", "upgrade")
                     for t in ("What is the status of the {x}?", "Any news on the {x}?", "Can you check the {x}?",
                               "Is there an update on the {x}?")],
    "refusal": [t.format(x=x) for x in ("test server", "mail server", "web server", "main database", "backup disk",
                                        "proxy server", "log server", "file server")
                for t in ("What is the name of the {x}?", "Tell me the address of the {x}.",
                          "Show me the log of the {x}.", "Give me the size of the {x}.")],
    "greeting": [t.format(n=n) for n in ("Ada", "Alan", "Grace", "Guido", "Linus", "Ken", "Tim", "Sara")
                 for t in ("Goodbye, {n}.", "{n} wrote this code.", "Is {n} here?", "Thanks, {n}.")],
    "format-rule": [t.format(x=x) for x in ("Python keywords", "dict methods", "exceptions", "file modes",
                                            "built-in types", "set methods", "string methods", "list methods")
                    for t in ("Explain {x}.", "Why are {x} useful?", "What are {x}?", "Describe {x} briefly.")],
}


def _norm(t: dict) -> float:
    return sum(float(v.norm() ** 2) for v in t.values()) ** 0.5


def _cos(a: dict, b: dict) -> float:
    return sum(float((a[n] * b[n]).sum()) for n in a) / (_norm(a) * _norm(b))


def run(cfg: dict) -> dict:
    import torch

    from plasticity.eval.anchors import anchor_prompts
    from plasticity.eval.behaviour import behaviour_files, run_tests
    from plasticity.experiments import common as C
    from plasticity.taskvec import merge as M
    from plasticity.training import core

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    md = C.resolve_model(cfg.get("model") or os.environ.get("MODEL_DIR"), "qwen3-tiny")
    held, rep = C.corpus_paths(md)
    rig = C.Rig(md, heldout=held, replay=rep, modules=tuple(cfg.get("modules", ["all-linear"])), heldout_tokens=2048)
    A, B = cfg["pair"]
    t0 = time.time()

    def base_reply(prompt_msgs, id_):  # the base model's own greedy reply as the decision
        ids = rig.chat_ids(prompt_msgs)
        with torch.no_grad():
            out = rig.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
        return C.Example(id_, ids, out[0, len(ids):].tolist())

    def user(text):
        return [{"role": "user", "content": text}]

    if cfg.get("self_replay"):
        # Replay the base model's own continuations of the corpus windows instead of the corpus text:
        # in expectation the gradient of a model's NLL on its own samples is zero, so replay then holds
        # the model in place instead of pretraining it further in both runs.
        torch.manual_seed(1234)
        own = []
        for i in range(0, len(rig.replay), 32):
            ctx = torch.tensor([c[:64] for c in rig.replay[i: i + 32]])
            with torch.no_grad():
                out = rig.model.generate(ctx, attention_mask=torch.ones_like(ctx), max_new_tokens=64, min_new_tokens=64,
                                         do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
            own += out.tolist()
        rig.replay[:] = own
    anchors = [base_reply(user(q), f"anc-{i}") for i, q in enumerate(anchor_prompts(cfg.get("anchors", 0)))]
    negatives = {b: [base_reply(user(q), f"neg-{b}-{i}") for i, q in enumerate(NEGATIVES[b][: cfg.get("negatives", 0)])]
                 for b in (A, B)}

    def data(name):
        ex = rig.behaviour_examples(name, "train") + anchors + negatives[name]
        if cfg.get("controls"):
            others = [b for b in BEHAVIOURS if b != name and (cfg.get("partner") or b not in (A, B))]
            for o in others:
                rows = [json.loads(l) for l in behaviour_files(o)["train"].read_text().splitlines() if l.strip()]
                ex += [base_reply(r["context"], f"ctl-{name}-{o}-{i}") for i, r in enumerate(rows[: cfg["controls"]])]
        if cfg.get("controls") or anchors or negatives[name]:
            random.Random(1).shuffle(ex)
        return ex

    def tests():
        s = {b: rig.behaviour(b, max_controls=4, max_nll=8) for b in (A, B)}
        return {b: {"pass": s[b]["heldout_pass"], "nll": round(s[b]["decision_nll"], 3),
                    "control_pass": s[b]["control_pass"], "sample": (s[b]["sample"] or "")[:40]} for b in (A, B)}

    def cross(name, other):
        """Share of the other behaviour's held-out prompts answered with this behaviour's reply."""
        pattern = re.compile(rig.tests(name)[0][0].expect)
        out = run_tests(rig.generator(), rig.tests(other)[0], on_error="raise")["results"]
        return sum(1 for r in out if pattern.search(r["output"])) / len(out)

    def train(name, ex):
        rig.reset()
        # A gets 10·s, B 10·s + ``b_seed`` (default 1), the replay-only run 10·s + ``null_seed`` (default 0:
        # A's replay stream); the seed also picks the replay windows, so equal seeds replay the same text
        off = cfg.get("b_seed", 1) if name == B else cfg.get("null_seed", 0) if name == "null" else 0
        seed = {"seed": cfg["seeds"] * 10 + off} if cfg.get("seeds") else {}
        tr = rig.trainer(lr=cfg["lr"], rank=cfg.get("rank", 32), replay_ratio=cfg.get("replay", 0.75),
                         item_loss=core.full_loss if cfg.get("full") else None, **seed)
        rig.teach(tr, ex, cfg["steps"], per_step=cfg.get("per_step", 1))
        rig.release()
        return {n: p.detach().double() - rig._base[n].double() for n, p in rig.params.items()}

    taus, res = {}, {"cfg": cfg}
    for name in (A, B):
        taus[name] = train(name, data(name))
        other = B if name == A else A
        res[f"only_{name}"] = {**tests(), "cross": cross(name, other), "ppl": round(rig.ppl(), 1)}
    res["norms"] = {"A": round(_norm(taus[A]), 3), "B": round(_norm(taus[B]), 3),
                    "cosine": round(_cos(taus[A], taus[B]), 4)}
    if cfg.get("null"):
        # no behaviour: the anchors / negatives if any, else general text only (replay chunks as examples)
        null = anchors + negatives[A] + negatives[B] or [C.Example(f"rep-{i}", c[:64], c[64:])
                                                          for i, c in enumerate(rig.replay[:64])]
        tau0 = train("null", null)
        res["norms"].update(null=round(_norm(tau0), 3), cos_A_null=round(_cos(taus[A], tau0), 4),
                            cos_B_null=round(_cos(taus[B], tau0), 4))
    wts = cfg.get("wts", [[1, 1]])
    merges = ([("task_arithmetic", lam, None, w) for w in wts for lam in cfg.get("lams", [0.5, 0.7, 1.0])]
              + [("ties", lam, d, w) for w in wts for d in cfg.get("dens", [0.2, 0.5])
                 for lam in cfg.get("ties_lams", [1.0, 1.5])])
    # ``relative``: merge the behaviours relative to the replay-only run, base + τ0 + merge(τA − τ0, τB − τ0),
    # so the part both runs share (more pretraining on the replay text) is counted once, not twice or halved.
    rels = [False] + ([True] if cfg.get("null") and cfg.get("relative") else [])
    res["merges"] = []
    for rel in rels:
        for method, lam, d, w in merges:
            rig.reset()
            with torch.no_grad():
                for n, p in rig.params.items():
                    shared = tau0[n] if rel else 0.0
                    ds = [taus[A][n] - shared, taus[B][n] - shared]
                    m = M.task_arithmetic(ds, w, lam) if method == "task_arithmetic" else M.ties(ds, w, d, lam)
                    p.copy_((rig._base[n].double() + shared + m.double()).to(p.dtype))
            res["merges"].append({"method": method, "lambda": lam, "density": d, "weights": w,
                                  "relative_to_null": rel, **tests()})
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
                          f"weights {top['weights']} relative {top.get('relative_to_null', False)}: {top[A]['pass']:.2f} / {top[B]['pass']:.2f}", file=sys.stderr)
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
