"""context-frozen: context-frozen training vs full backprop on the same examples.

Each training example gets a conversation history in front of the question (a system message
holding ``history_tokens`` tokens of general text, as in a served chat), so the context is long
and the decision short, the case context-frozen training is for. Both modes run the same
``Trainer.step`` loop (same examples, order, replay chunks, fused Apollo); only the loss function
differs: ``frozen_context_loss`` (context under no_grad into the cache) vs ``full_loss`` (autograd
through context and decision; the loss is on the decision tokens in both). Measured: behaviour
(held-out tests on plain prompts; reply NLL with and without a history), held-out perplexity, step
time, decision tokens/s, activation bytes saved for backward (peak per step), RSS growth.
"""

from __future__ import annotations

from . import common as C

QUICK = C.Budget(behaviour="ticket-reply", history_tokens=48, steps=3, lr=1e-3, rank=32, replay_ratio=0.25,
                 **C.QUICK_EVAL)
FULL = C.Budget(behaviour="ticket-reply", history_tokens=384, steps=100, lr=1e-3, rank=32, replay_ratio=0.25,
                **C.FULL_EVAL)
REAL = C.Budget(behaviour="ticket-reply", history_tokens=384, steps=40, lr=1e-4, rank=64, replay_ratio=0.25,
                **C.REAL_EVAL)
BUDGETS = C.Budgets(QUICK, FULL, REAL)

TITLE = "context-frozen vs full backprop"
QUESTION = ("On the same examples, what does context-frozen training change against full backprop: behaviour "
            "learned, forgetting, tokens/s, memory?")


def _with_history(rig, name: str, split: str, n_tokens: int, offset: int):
    """The behaviour's examples with a general-text system message of ``n_tokens`` tokens in front."""
    import json

    from plasticity.eval.behaviour import behaviour_files

    rows = [json.loads(l) for l in behaviour_files(name)[split].read_text().splitlines() if l.strip()]
    chunks = rig.replay
    out = []
    per = -(-n_tokens // 128)
    for i, r in enumerate(rows):
        k = (offset + i * per) % max(1, len(chunks) - per)
        ids = [t for c in chunks[k: k + per] for t in c][:n_tokens]
        hist = rig.tok.decode(ids, skip_special_tokens=True)
        ex = rig.encode([{"role": "system", "content": hist}] + r["context"], r["decision"], r.get("id", f"{split}-{i}"))
        out.append(ex)
    return out


def run(args) -> dict:
    import random

    from plasticity.training import core

    rig, log, out, b = C.start(args, "context-frozen", BUDGETS)
    train = _with_history(rig, b.behaviour, "train", b.history_tokens, 0)
    random.Random(f"{rig.seed}:cf").shuffle(train)
    held_hist = _with_history(rig, b.behaviour, "heldout", b.history_tokens, 7)[:b.max_nll]
    ctx_mean = sum(len(e.context) for e in train) / len(train)
    dec_mean = sum(len(e.decision) for e in train) / len(train)
    log(f"examples: context {ctx_mean:.0f} tokens, decision {dec_mean:.0f} tokens on average")

    def measure():
        m = rig.scores(b, ppl=False)
        return dict(m, nll_with_history=rig.decision_nll(held_hist), ppl=rig.ppl(), **rig.general(b.max_general))

    rig.reset()
    base = measure()
    rows = [dict(mode="before training", **base, ppl_change=0.0)]
    trains = {}
    for i, (mode, fn) in enumerate((("context-frozen", core.frozen_context_loss), ("full backprop", core.full_loss))):
        rig.reset()
        tr = rig.trainer(lr=b.lr, rank=b.rank, replay_ratio=b.replay_ratio, item_loss=fn)
        t = rig.teach(tr, train, b.steps, label=f"run {i + 1}/2 {mode}")
        m = measure()
        trains[mode] = t
        rows.append(dict(mode=mode, **m, ppl_change=C.relative_change(base["ppl"], m["ppl"]),
                         seconds_per_step=t["seconds_per_step"], decision_tokens_per_s=t["tokens_per_s"],
                         activation_mb=t["activation_bytes_peak"] / 2**20,
                         rss_growth_mb=t["rss_peak_delta_bytes"] / 2**20,
                         optimizer_state_mb=t["optimizer_state_bytes"] / 2**20, loss_last=t["loss_last"]))
        log(f"{mode}: held-out pass {m['heldout_pass']:.2f}, ppl {C.pct(rows[-1]['ppl_change'])}, "
            f"{t['seconds_per_step']:.2f} s/step, activations {t['activation_bytes_peak'] / 2**20:.1f} MB")
    rig.reset()
    rig.release()

    f, u = rows[1], rows[2]
    speed = f["decision_tokens_per_s"] / u["decision_tokens_per_s"] if u["decision_tokens_per_s"] else float("nan")
    mem = u["activation_mb"] / f["activation_mb"] if f["activation_mb"] else float("nan")
    answer = (f"On {b.steps} steps of the same examples (context ≈{ctx_mean:.0f} tokens, decision ≈{dec_mean:.0f}): "
              f"context-frozen learned {f['heldout_pass']:.0%} of held-out prompts (controls {f['control_pass']:.0%}) "
              f"at ppl {C.pct(f['ppl_change'])}, {f['decision_tokens_per_s']:.0f} decision tok/s and "
              f"{f['activation_mb']:.1f} MB of saved activations per step; full backprop learned "
              f"{u['heldout_pass']:.0%} (controls {u['control_pass']:.0%}) at ppl {C.pct(u['ppl_change'])}, "
              f"{u['decision_tokens_per_s']:.0f} tok/s and {u['activation_mb']:.1f} MB — context-frozen is "
              f"{speed:.2f}× the throughput with "
              + (f"{mem:.1f}× less activation memory." if mem >= 1 else f"{1 / mem:.1f}× more activation memory."))
    modes = ["context-frozen", "full backprop"]
    plots = [p for p in [
        C.line_plot(out / "cf_loss.png", {m: (list(range(1, len(trains[m]["losses"]) + 1)), trains[m]["losses"])
                                          for m in modes}, title="training loss (batch mean)", xlabel="step",
                    ylabel="loss"),
        C.panel_bars(out / "cf_cost.png", modes,
                     {"decision tokens/s": [f["decision_tokens_per_s"], u["decision_tokens_per_s"]],
                      "s per step": [f["seconds_per_step"], u["seconds_per_step"]],
                      "saved activations MB/step": [f["activation_mb"], u["activation_mb"]]}, title="cost per mode"),
        C.panel_bars(out / "cf_outcome.png", ["before"] + modes,
                     {"held-out pass": [r["heldout_pass"] for r in rows], "controls pass": [r["control_pass"] for r in rows],
                      "held-out ppl change (%)": [100 * r["ppl_change"] for r in rows]}, title="outcome per mode"),
    ] if p]
    result = {"experiment": "context-frozen", "answer": answer, "rows": rows, "plots": plots,
              "speedup": speed, "activation_ratio": mem,
              "train": {m: {k: v for k, v in t.items() if k != "losses"} for m, t in trains.items()},
              "losses": {m: t["losses"] for m, t in trains.items()}}
    setup = dict(C.base_setup(rig, args), behaviour=b.behaviour, history_tokens=b.history_tokens, steps=b.steps,
                 lr=b.lr, rank=b.rank, replay_ratio=b.replay_ratio, context_tokens_mean=ctx_mean,
                 decision_tokens_mean=dec_mean, examples_per_step=1)
    C.finish(result, log, quick=args.quick, budget=b, setup=setup)
    cols = [("mode", "mode"), ("heldout_pass", "held-out pass", lambda v: f"{v:.2f}"),
            ("control_pass", "controls pass", lambda v: f"{v:.2f}"), ("decision_nll", "reply NLL", lambda v: f"{v:.3f}"),
            ("nll_with_history", "reply NLL (with history)", lambda v: f"{v:.3f}"),
            ("ppl", "held-out ppl", lambda v: f"{v:.2f}"), ("ppl_change", "Δ ppl", C.pct),
            ("general_pass", "general Qs", lambda v: f"{v:.2f}"),
            ("seconds_per_step", "s/step", lambda v: f"{v:.3f}"),
            ("decision_tokens_per_s", "decision tok/s", lambda v: f"{v:.0f}"),
            ("activation_mb", "activations MB/step", lambda v: f"{v:.1f}"),
            ("rss_growth_mb", "RSS growth MB", lambda v: f"{v:.1f}"),
            ("optimizer_state_mb", "Apollo state MB", lambda v: f"{v:.2f}")]
    notes = ["Activation memory = bytes autograd saved for backward in a step (Trainer's saved_tensors_hooks count, "
             "weights excluded), peak over the run; RSS growth is the process's, less reliable (allocator reuse; "
             "the second run starts on a grown heap).",
             "The loss is on the decision tokens in both modes; tokens/s counts decision tokens (replay chunks: "
             "their 64 trained tokens).",
             "Tests use the plain prompts (no history); 'reply NLL (with history)' uses held-out prompts with a "
             "history like the training examples."]
    return C.write_outputs(out, result, title=TITLE, question=QUESTION, columns=cols, notes=notes)
