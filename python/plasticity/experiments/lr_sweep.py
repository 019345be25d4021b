"""lr-sweep: which learning rate teaches the behaviour, and what does it cost, narrow vs diverse data?

The seeds (multi-scale notes) predict that lr 1e-4 is safe only with diverse data (~25% general
text in every batch). For each learning rate × {narrow: behaviour examples only, diverse: the same
behaviour steps plus 25% replay of general text}, the weights are reset and the behaviour is taught
for the same number of behavioural steps through ``Trainer.step``. "Safe" = held-out perplexity rises
by less than ``safe_ppl_rise`` (the forgetting guard's default threshold, 5%).
"""

from __future__ import annotations

from . import common as C

QUICK = C.Budget(behaviour="ticket-reply", lrs=[1e-4, 1e-3], steps=3, rank=32, diverse_replay=0.25, extra_replays=[],
                 **C.QUICK_EVAL, safe_ppl_rise=0.05)
FULL = C.Budget(behaviour="ticket-reply", lrs=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3], steps=120, rank=32,
                diverse_replay=0.25, extra_replays=[0.75], **C.FULL_EVAL,
                safe_ppl_rise=0.05)
# SmolLM2: 1e-3 is left out (perplexity +90% in 3 steps), 30 steps (~17 min a seed on one core).
REAL = C.Budget(behaviour="ticket-reply", lrs=[1e-5, 3e-5, 1e-4, 3e-4], steps=30, rank=64,
                diverse_replay=0.25, extra_replays=[0.75], **C.REAL_EVAL,
                safe_ppl_rise=0.05)
BUDGETS = C.Budgets(QUICK, FULL, REAL)

TITLE = "learning rate × data diversity: behaviour learned vs forgetting"
QUESTION = ("Which learning rate works, and is 1e-4 safe only with diverse (25% replay) data, as the seeds "
            "predict?")


def run(args) -> dict:
    rig, log, out, b = C.start(args, "lr-sweep", BUDGETS)
    train = rig.behaviour_examples(b.behaviour, "train")

    rig.reset()
    base = rig.scores(b)
    log(f"baseline: held-out pass {base['heldout_pass']:.2f}, NLL {base['decision_nll']:.3f}, ppl {base['ppl']:.2f}")
    rows = []
    conds = {"narrow": 0.0, "diverse": b.diverse_replay, **{f"replay {r:.0%}": r for r in b.extra_replays}}
    runs = [(lr, data) for data in conds for lr in b.lrs]
    for i, (lr, data) in enumerate(runs):
        rig.reset()
        rr = conds[data]
        tr = rig.trainer(lr=lr, rank=b.rank, replay_ratio=rr)
        t = rig.teach(tr, train, b.steps, label=f"run {i + 1}/{len(runs)} lr {lr:g} {data}")
        m = rig.scores(b)
        ch = C.relative_change(base["ppl"], m["ppl"])
        rows.append(dict(lr=lr, data=data, replay_ratio=rr, steps=b.steps, **m, ppl_change=ch,
                         safe=C.safe(base, m, b.safe_ppl_rise), learned=m["heldout_pass"] >= 0.5,
                         nll_change=m["decision_nll"] - base["decision_nll"], loss_last=t["loss_last"],
                         replay_chunks=t["replay_chunks"], seconds=t["wall_seconds"]))
        log(f"run {i + 1}/{len(runs)} lr {lr:g} {data}: held-out pass {m['heldout_pass']:.2f}, controls "
            f"{m['control_pass']:.2f}, NLL {m['decision_nll']:.3f}, ppl {C.pct(ch)} ({t['wall_seconds']:.0f}s)")
    rig.reset()
    rig.release()

    def row(lr, data):
        return next((r for r in rows if r["lr"] == lr and r["data"] == data), None)

    key = 1e-4 if 1e-4 in b.lrs else b.lrs[len(b.lrs) // 2]
    n, d = row(key, "narrow"), row(key, "diverse")

    def desc(r):
        return (f"ppl {C.pct(r['ppl_change'])}{C.general_text(base, r)}, behaviour {r['heldout_pass']:.0%} held-out "
                f"(controls {r['control_pass']:.0%}), reply NLL {r['decision_nll']:.2f}")

    prediction_holds = (not n["safe"]) and d["safe"]
    verdict = ("consistent with the seeds' prediction (narrow unsafe, diverse safe)" if prediction_holds else
               f"not what the seeds predict: narrow is {'safe' if n['safe'] else 'unsafe'} and diverse is "
               f"{'safe' if d['safe'] else 'unsafe'} (safe = perplexity rise < {b.safe_ppl_rise:.0%}"
               + (" and no general question lost)" if base.get("general_pass") else ")"))
    best = []
    for data in conds:
        ok = [r for r in rows if r["data"] == data and r["learned"] and r["safe"]]
        learned = [r for r in rows if r["data"] == data and r["learned"]]
        if ok:
            best.append(f"{data}: lr {min(ok, key=lambda r: r['ppl_change'])['lr']:g} learns (≥50%) and stays safe")
        elif learned:
            r0 = min(learned, key=lambda r: r["lr"])
            best.append(f"{data}: nothing both learns and stays safe; the lowest lr that learns ({r0['lr']:g}) "
                        f"costs ppl {C.pct(r0['ppl_change'])}")
        else:
            best.append(f"{data}: no lr learns the behaviour in {b.steps} steps")
    answer = (f"After {b.steps} behavioural steps, lr {key:g} with narrow data: {desc(n)}; with "
              f"{b.diverse_replay:.0%} replay: {desc(d)} — {verdict}"
              + "".join(f"; with {conds[c]:.0%} replay: {desc(row(key, c))}" for c in list(conds)[2:])
              + f". Across the sweep, {'; '.join(best)}.")
    plots = []
    for data_key, ylab, fn, name in (("heldout_pass", "held-out pass rate", None, "lr_sweep_behaviour.png"),
                                     ("ppl_change", "held-out perplexity change (%)", 100.0, "lr_sweep_ppl.png"),
                                     ("decision_nll", "reply NLL (nats/token)", None, "lr_sweep_nll.png")):
        series = {}
        for data in conds:
            rs = [r for r in rows if r["data"] == data]
            series[f"{data}" + (f" ({b.diverse_replay:.0%} replay)" if data == "diverse" else "")] = (
                [r["lr"] for r in rs], [r[data_key] * (fn or 1.0) for r in rs])
        p = C.line_plot(out / name, series, logx=True, title=f"{b.behaviour}, {b.steps} steps: {ylab}",
                        xlabel="learning rate", ylabel=ylab,
                        hline=(100 * b.safe_ppl_rise if data_key == "ppl_change" else
                               base["decision_nll"] if data_key == "decision_nll" else None))
        if p:
            plots.append(p)
    result = {"experiment": "lr-sweep", "answer": answer, "rows": rows, "baseline": base, "plots": plots,
              "prediction_holds": prediction_holds, "key_lr": key}
    setup = dict(C.base_setup(rig, args), behaviour=b.behaviour, lrs=b.lrs, steps=b.steps, rank=b.rank,
                 examples_per_step=1, narrow_replay=0.0, diverse_replay=b.diverse_replay,
                 extra_replay_conditions=b.extra_replays,
                 safe_ppl_rise=b.safe_ppl_rise)
    C.finish(result, log, quick=args.quick, budget=b, setup=setup)
    cols = [("lr", "lr", lambda v: f"{v:g}"), ("data", "data"), ("heldout_pass", "held-out pass", lambda v: f"{v:.2f}"),
            ("control_pass", "controls pass", lambda v: f"{v:.2f}"), ("decision_nll", "reply NLL", lambda v: f"{v:.3f}"),
            ("ppl", "held-out ppl", lambda v: f"{v:.2f}"), ("ppl_change", "Δ ppl", C.pct),
            ("general_pass", "general Qs", lambda v: f"{v:.2f}"), ("safe", f"safe (<{b.safe_ppl_rise:.0%})"), ("seconds", "train s", lambda v: f"{v:.0f}")]
    notes = [f"Baseline: held-out pass {base['heldout_pass']:.2f}, controls {base['control_pass']:.2f}, reply NLL "
             f"{base['decision_nll']:.3f}, ppl {base['ppl']:.2f}.",
             "All runs see the same behavioural examples in the same order (one per step); replay adds 128-token "
             "general-text chunks (64 frozen + 64 trained) as the Trainer's replay credit allows, so that replay is "
             "the configured share of trained items. Conditions beyond narrow/diverse (25%) are extra, for contrast.",
             "Apollo rank 32 (the tiny model has width 256: rank 256 would fall back to AdamW)."]
    return C.write_outputs(out, result, title=TITLE, question=QUESTION, columns=cols, notes=notes)
