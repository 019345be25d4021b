"""backward-transfer: behaviours taught in sequence; what does learning B do to A and to general text?

Sessions 0..T-1 teach one shipped behaviour each, continuing from the previous session's weights
with the same Trainer (one optimizer state throughout, as on a server taught one behaviour after
another), with replay of general text. After every session, every behaviour is tested (held-out
pass rate and reply NLL) and the held-out perplexity of general text is measured. R[i][j] = score
on task j after session i; ``eval.metrics.continual_metrics`` gives ACC, BWT, FWT, forgetting
(Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018). General text is its own column: perplexity before
and after each session. The whole sequence is run once per replay ratio (the seeds' 25%, and 75%).
"""

from __future__ import annotations

from . import common as C

QUICK = C.Budget(tasks=["ticket-reply", "format-rule"], steps=3, lr=1e-3, rank=32, replays=[0.25],
                 **C.QUICK_EVAL)
FULL = C.Budget(tasks=["ticket-reply", "format-rule", "refusal"], steps=120, lr=1e-3, rank=32, replays=[0.25, 0.75],
                **C.FULL_EVAL)
# SmolLM2 learns each reply within ~10 steps at lr 1e-4: 30 steps a behaviour (~17 min a seed).
REAL = C.Budget(tasks=["ticket-reply", "format-rule", "refusal"], steps=30, lr=1e-4, rank=64, replays=[0.25, 0.75],
                **C.REAL_EVAL)
BUDGETS = C.Budgets(QUICK, FULL, REAL)

TITLE = "backward transfer across behaviours and general text"
QUESTION = ("Does learning behaviour B change the scores on an earlier behaviour A and on general text "
            "(positive backward transfer, as the seeds hope from 25% replay)?")


def run(args) -> dict:
    from plasticity.eval.metrics import continual_metrics

    rig, log, out, b = C.start(args, "backward-transfer", BUDGETS)
    tasks = list(b.tasks)
    data = {t: rig.behaviour_examples(t, "train") for t in tasks}

    def measure(label):
        s = {t: rig.scores(b, t, ppl=False) for t in tasks}
        p = rig.ppl()
        g = rig.general(b.max_general)["general_pass"]
        log(f"{label}: " + ", ".join(f"{t} {s[t]['heldout_pass']:.2f}" for t in tasks) + f", ppl {p:.2f}, general {g:.2f}")
        return s, (p, g)

    rig.reset()
    base, (ppl0, gen0) = measure("before any session")
    bl = [base[t]["heldout_pass"] for t in tasks]
    bln = [base[t]["decision_nll"] for t in tasks]
    rows = [dict(replay="-", session="before", trained=None, **{f"{t}_pass": base[t]["heldout_pass"] for t in tasks},
                 **{f"{t}_nll": base[t]["decision_nll"] for t in tasks},
                 **{f"{t}_control_pass": base[t]["control_pass"] for t in tasks}, ppl=ppl0, ppl_change=0.0,
                 general_pass=gen0)]
    conds, plots = {}, []
    for rr in b.replays:
        tag = f"{rr:.0%} replay"
        rig.reset()
        tr = rig.trainer(lr=b.lr, rank=b.rank, replay_ratio=rr)
        after, ppls, gens, trains = [], [ppl0], [gen0], []
        for i, t in enumerate(tasks):
            trains.append(rig.teach(tr, data[t], b.steps, label=f"{tag}: session {i + 1}/{len(tasks)} {t}"))
            s, (p, g) = measure(f"{tag}: after session {i + 1} ({t})")
            after.append(s)
            ppls.append(p)
            gens.append(g)
        R = [[after[i][t]["heldout_pass"] for t in tasks] for i in range(len(tasks))]
        Rn = [[after[i][t]["decision_nll"] for t in tasks] for i in range(len(tasks))]
        Rc = [[after[i][t]["control_pass"] for t in tasks] for i in range(len(tasks))]
        cm = continual_metrics(R, bl, task_names=tasks)
        cmn = continual_metrics(Rn, bln, task_names=tasks, higher_is_better=False)
        for i, t in enumerate(tasks):
            rows.append(dict(replay=tag, session=f"after {i + 1}", trained=t,
                             **{f"{u}_pass": R[i][j] for j, u in enumerate(tasks)},
                             **{f"{u}_nll": Rn[i][j] for j, u in enumerate(tasks)},
                             **{f"{u}_control_pass": Rc[i][j] for j, u in enumerate(tasks)},
                             ppl=ppls[i + 1], ppl_change=C.relative_change(ppl0, ppls[i + 1]), general_pass=gens[i + 1],
                             seconds=trains[i]["wall_seconds"]))
        conds[tag] = {"replay_ratio": rr, "R_pass": R, "R_reply_nll": Rn, "R_control_pass": Rc,
                      "continual_pass_rate": cm, "continual_reply_nll": cmn, "heldout_ppl": ppls, "general_pass": gens,
                      "train": [{k: v for k, v in t.items() if k != "losses"} for t in trains]}
        sfx = f"{round(rr * 100)}"
        plots += [p for p in [
            C.heatmap(out / f"bwt_pass_replay{sfx}.png", R, [f"after {t}" for t in tasks], tasks, vmin=0, vmax=1,
                      title=f"held-out pass rate R[i][j], {tag}"),
            C.heatmap(out / f"bwt_nll_replay{sfx}.png", Rn, [f"after {t}" for t in tasks], tasks, cmap="viridis_r",
                      title=f"reply NLL (nats/token; lower = learned), {tag}"),
        ] if p]
    rig.reset()
    rig.release()

    a, bt = tasks[0], tasks[1]

    def sentence(tag, c):
        R, Rn, ppls = c["R_pass"], c["R_reply_nll"], c["heldout_ppl"]
        cm, cmn = c["continual_pass_rate"], c["continual_reply_nll"]
        bwt, bwtn = cm["backward_transfer"], cmn["backward_transfer"]
        return (f"with {tag}, learning {bt} after {a} moved {a}'s held-out pass rate {R[0][0]:.0%} → {R[1][0]:.0%} "
                f"(reply NLL {Rn[0][0]:.2f} → {Rn[1][0]:.2f}); over {len(tasks)} sessions BWT = {bwt:+.2f} on pass "
                f"rates and {bwtn:+.2f} nats on reply NLL (positive = earlier behaviours improved), forgetting "
                f"{cm['forgetting']:.2f}, ACC {cm['overall_performance']:.2f}; general-text ppl {ppl0:.1f} → "
                f"{ppls[1]:.1f} after the first session and {ppls[-1]:.1f} after the last "
                f"({C.pct(C.relative_change(ppl0, ppls[-1]))} overall)")

    any_pos = [tag for tag, c in conds.items() if c["continual_pass_rate"]["backward_transfer"] > 0
               or c["continual_reply_nll"]["backward_transfer"] > 0]
    replaced = all(c["continual_pass_rate"]["forgetting"] >= 0.99 for c in conds.values())
    gen_better = [tag for tag, c in conds.items() if c["heldout_ppl"][-1] < c["heldout_ppl"][1]]
    body = "; ".join(sentence(tag, c) for tag, c in conds.items())
    answer = (body[:1].upper() + body[1:]
              + (f" — positive backward transfer on a behaviour measure with {', '.join(any_pos)}"
                 if any_pos else " — no positive backward transfer on the behaviours in any condition"
                 + (" (each new behaviour replaced the earlier ones)" if replaced else ""))
              + (f"; general text did improve while the later behaviours were learned with {', '.join(gen_better)} "
                 f"(perplexity after the last session below that after the first)" if gen_better else
                 "; general text did not improve while the later behaviours were learned")
              + ".")
    plots.append(C.line_plot(out / "bwt_ppl.png", {tag: (list(range(len(c["heldout_ppl"]))), c["heldout_ppl"])
                                                   for tag, c in conds.items()},
                             title="general text: held-out perplexity after each session", xlabel="sessions done",
                             ylabel="perplexity", hline=ppl0))
    plots = [p for p in plots if p]
    result = {"experiment": "backward-transfer", "answer": answer, "rows": rows, "tasks": tasks, "baseline": base,
              "conditions": conds, "plots": plots}
    setup = dict(C.base_setup(rig, args), tasks=tasks, steps_per_session=b.steps, lr=b.lr, rank=b.rank,
                 replay_ratios=b.replays, examples_per_step=1, optimizer="one Trainer per sequence")
    C.finish(result, log, quick=args.quick, budget=b, setup=setup)
    cols = [("replay", "replay"), ("session", "session"), ("trained", "trained")]
    cols += [(f"{t}_pass", f"{t} pass", lambda v: f"{v:.2f}") for t in tasks]
    cols += [(f"{t}_nll", f"{t} NLL", lambda v: f"{v:.2f}") for t in tasks]
    cols += [(f"{t}_control_pass", f"{t} controls", lambda v: f"{v:.2f}") for t in tasks]
    cols += [("ppl", "held-out ppl", lambda v: f"{v:.2f}"), ("ppl_change", "Δ ppl vs before", C.pct),
             ("general_pass", "general Qs", lambda v: f"{v:.2f}")]
    keys = ("overall_performance", "learning_accuracy", "backward_transfer", "forward_transfer", "forgetting",
            "worst_forgetting")
    extra = "\n| metric | " + " | ".join(f"pass rates, {t} | reply NLL, {t}" for t in conds) + " |\n|---|" + \
        "---|---|" * len(conds) + "\n" + "".join(
            f"| {k} | " + " | ".join(f"{C.fmt(c['continual_pass_rate'][k])} | {C.fmt(c['continual_reply_nll'][k])}"
                                     for c in conds.values()) + " |\n" for k in keys) + \
        ("\nFor reply NLL (lower is better) BWT/FWT/forgetting are computed on −NLL: positive BWT = earlier replies "
         "became more likely.\n")
    notes = ["Pass rates: held-out tests of each behaviour (greedy); controls: prompts that must not get it.",
             "Replay text comes from the corpus the tiny model was pretrained on (briefly), so replay by itself can "
             "lower held-out perplexity (docs/results/training.md); a drop in perplexity is not evidence that the behaviours "
             "helped general text.",
             "Each sequence uses one Trainer (one Apollo state), as a server taught one behaviour after another."]
    return C.write_outputs(out, result, title=TITLE, question=QUESTION, columns=cols, notes=notes, extra_md=extra)
