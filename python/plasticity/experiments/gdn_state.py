"""gdn-state: does training change the Gated DeltaNet recurrent states (and attention outputs)?

On the hybrid Qwen3.5 (3 GDN layers + 1 attention layer in the tiny model), fixed inputs are run
before and after teaching a behaviour (modules all-linear + gdn: projections, ``A_log``,
``dt_bias``), and per layer we compare:

- the GDN layers' final recurrent state S (batch × value heads × d_k × d_v) after the input;
- the token mixer's output (``linear_attn`` or ``self_attn``) at every position;
- the decoder layer's output (the residual stream) at every position.

Change = ‖after − before‖ / ‖before‖ summed over the inputs of a set; "coherence" = mean pairwise
cosine between the per-input changes of a set (ΔS; for outputs, the mean change over positions) (near 1: the training moved every input's state in
the same direction; near 0: unrelated changes). Input sets: the behaviour's held-out trigger prompts,
prompts outside the behaviour (its controls and another behaviour's prompts), and general text
windows. Also the relative weight change per layer.
"""

from __future__ import annotations

from . import common as C

QUICK = C.Budget(behaviour="ticket-reply", other="format-rule", checkpoints=[1, 3], lr=1e-3, rank=32, replay_ratio=0.25,
                 n_inputs=2, text_window=64, **C.QUICK_EVAL)
FULL = C.Budget(behaviour="ticket-reply", other="format-rule", checkpoints=[10, 30, 90], lr=1e-3, rank=32, replay_ratio=0.25,
                n_inputs=8, text_window=128, **C.FULL_EVAL)
BUDGETS = C.Budgets(QUICK, FULL, default_model=C.HYBRID_MODEL)

TITLE = "GDN recurrent states and attention outputs before/after training (hybrid model)"
QUESTION = ("Does the Gated DeltaNet recurrent state on fixed inputs change after training, how much per layer, "
            "and more on the trained behaviour's inputs than on general text?")


def _capture(rig, inputs: list[list[int]]) -> list[dict]:
    """Per input: {layer: {"state": S or None, "mixer": out, "layer": out}} (float32 copies)."""
    import torch

    layers = rig.model.model.layers
    caps = []
    store: dict = {}

    def first(o):
        return (o[0] if isinstance(o, tuple) else o).detach().float().clone()

    hooks = []
    for i, layer in enumerate(layers):
        mixer = getattr(layer, "linear_attn", None) or getattr(layer, "self_attn")
        hooks.append(mixer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(("mixer", i), first(o))))
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(("layer", i), first(o))))
    try:
        with torch.no_grad():
            for ids in inputs:
                store.clear()
                out = rig.model(input_ids=torch.tensor([ids]), use_cache=True)
                cache = out.past_key_values
                per = {}
                for i in range(len(layers)):
                    st = None
                    cl = cache.layers[i] if cache is not None and hasattr(cache, "layers") else None
                    rs = getattr(cl, "recurrent_states", None)
                    if isinstance(rs, dict) and rs.get(0) is not None:
                        st = rs[0].detach().float().clone()
                    per[i] = {"state": st, "mixer": store[("mixer", i)], "layer": store[("layer", i)]}
                caps.append(per)
    finally:
        for h in hooks:
            h.remove()
    return caps


def _compare(before: list[dict], after: list[dict], layer: int, key: str) -> dict | None:
    import torch

    if before[0][layer][key] is None:
        return None
    num = den = 0.0
    deltas = []
    for b, a in zip(before, after):
        x, y = b[layer][key], a[layer][key]
        num += float((y - x).pow(2).sum())
        den += float(x.pow(2).sum())
        d = y - x
        # states have one shape for every input; outputs are (1, positions, hidden): compare mean directions
        deltas.append(d.flatten() if key == "state" else d.reshape(-1, d.shape[-1]).mean(0))
    cos = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            cos.append(float(torch.nn.functional.cosine_similarity(deltas[i], deltas[j], dim=0)))
    return {"rel_change": (num / den) ** 0.5 if den > 0 else 0.0,
            "coherence": sum(cos) / len(cos) if cos else None}


def run(args) -> dict:
    rig, log, out, b = C.start(args, "gdn-state", BUDGETS, modules=("all-linear", "gdn"))
    layer_types = list(getattr(rig.model.config, "layer_types", None) or ["full_attention"] * len(rig.model.model.layers))
    n_layers = len(rig.model.model.layers)
    gdn_layers = [i for i, t in enumerate(layer_types) if t == "linear_attention"]
    if not gdn_layers:
        log("this model has no Gated DeltaNet layers: only attention outputs and layer outputs are compared")
    held, ctrl = rig.tests(b.behaviour)
    oheld, _ = rig.tests(b.other)
    sets = {
        "trigger prompts": [rig.chat_ids(t.messages) for t in held[:b.n_inputs]],
        "other prompts": [rig.chat_ids(t.messages) for t in (ctrl + oheld)[:b.n_inputs]],
        "general text": [rig.heldout_ids.flatten()[k * b.text_window:(k + 1) * b.text_window].tolist()
                         for k in range(b.n_inputs)],
    }

    rig.reset()
    m0 = rig.scores(b)
    before = {k: _capture(rig, v) for k, v in sets.items()}
    tr = rig.trainer(lr=b.lr, rank=b.rank, replay_ratio=b.replay_ratio)
    train = rig.behaviour_examples(b.behaviour, "train")
    rows, done, losses, ms, wd = [], 0, [], {}, {}
    for cp in b.checkpoints:
        t = rig.teach(tr, train, cp - done, label=f"training to step {cp}", offset=done)
        losses += t["losses"]
        done = cp
        ms[cp] = m1 = rig.scores(b)
        after = {k: _capture(rig, v) for k, v in sets.items()}
        wd = rig.weight_delta()
        log(f"step {cp}: held-out pass {m1['heldout_pass']:.2f}, ppl {m1['ppl']:.2f}")
        for i in range(n_layers):
            kind = "GDN" if i in gdn_layers else "attention"
            prefix = f"model.layers.{i}."
            ws = [v for n, v in wd.items() if n.startswith(prefix)]
            gates = {n.rsplit(".", 1)[-1]: v for n, v in wd.items()
                     if n.startswith(prefix) and n.endswith(("A_log", "dt_bias"))}
            for sname in sets:
                r = dict(step=cp, layer=i, kind=kind, inputs=sname, heldout_pass=m1["heldout_pass"],
                         control_pass=m1["control_pass"], ppl=m1["ppl"])
                for key in ("state", "mixer", "layer"):
                    c = _compare(before[sname], after[sname], i, key)
                    r[f"{key}_change"] = None if c is None else c["rel_change"]
                    r[f"{key}_coherence"] = None if c is None else c["coherence"]
                r["weight_change_max"] = max(ws) if ws else None
                r.update({f"{g}_change": v for g, v in gates.items()})
                rows.append(r)
    steps = done
    rig.reset()
    rig.release()

    def get(i, s, k, step=None):
        return next(r[k] for r in rows if r["layer"] == i and r["inputs"] == s and r["step"] == (step or steps))

    trig, gen = "trigger prompts", "general text"
    behaviour = (f"after {steps} steps (held-out pass {m0['heldout_pass']:.0%} → {m1['heldout_pass']:.0%}, ppl "
                 f"{C.pct(C.relative_change(m0['ppl'], m1['ppl']))})")
    oth = "other prompts"

    def pcts(vals):
        return ", ".join(f"{100 * v:.1f}%" for v in vals)

    def cosines(vals):
        return ", ".join("n/a" if c is None else f"{c:.2f}" for c in vals)

    if gdn_layers:
        st_t = [get(i, trig, "state_change") for i in gdn_layers]
        st_o = [get(i, oth, "state_change") for i in gdn_layers]
        st_g = [get(i, gen, "state_change") for i in gdn_layers]
        coh_t = [get(i, trig, "state_coherence") for i in gdn_layers]
        coh_g = [get(i, gen, "state_coherence") for i in gdn_layers]
        mean_t, mean_o = sum(st_t) / len(st_t), sum(st_o) / len(st_o)
        ratio = mean_t / max(sum(st_g) / len(st_g), 1e-12)
        first = b.checkpoints[0]
        st_first = [get(i, trig, "state_change", first) for i in gdn_layers]
        same = abs(mean_o - mean_t) <= 0.15 * mean_t
        specific = ("about as much on the other chat prompts" if same else
                    ("less" if mean_o < mean_t else "more") + " on the other chat prompts")
        why = ": the change is not specific to the trained trigger" if same else ""
        gdn_part = (f"the GDN recurrent states (layers {', '.join(map(str, gdn_layers))}) changed by {pcts(st_t)} on the "
                    f"trigger prompts, {specific} ({pcts(st_o)}{why}) "
                    f"and by {pcts(st_g)} on general text ({ratio:.1f}× less than on the trigger prompts"
                    if ratio >= 1 else
                    f"the GDN recurrent states (layers {', '.join(map(str, gdn_layers))}) changed by {pcts(st_t)} on the "
                    f"trigger prompts, {specific} ({pcts(st_o)}{why}) and by {pcts(st_g)} on general text "
                    f"({1 / ratio:.1f}× more than on the trigger prompts")
        gdn_part += (f"); per-input state changes point the same way on the trigger prompts (mean pairwise cosine "
                     f"{cosines(coh_t)}) but not on general text ({cosines(coh_g)})"
                     + (f"; after {first} step{'s' if first != 1 else ''} the trigger-prompt change was "
                        f"{pcts(st_first)}" if first != steps else ""))
    else:
        gdn_part = "the model has no GDN layers"
    att = [i for i in range(n_layers) if i not in gdn_layers]
    att_part = "; attention outputs changed by " + ", ".join(
        f"{100 * get(i, trig, 'mixer_change'):.1f}% (layer {i}, trigger) / {100 * get(i, gen, 'mixer_change'):.1f}% "
        f"(general text)" for i in att) if att else ""
    answer = f"On {rig.model_dir.name}, {behaviour}, {gdn_part}{att_part}."
    plots = []
    for key, label in (("state_change", "GDN recurrent state"), ("mixer_change", "token-mixer output"),
                       ("layer_change", "layer output (residual stream)")):
        ls = gdn_layers if key == "state_change" else list(range(n_layers))
        if not ls:
            continue
        p = C.bar_plot(out / f"gdn_{key}.png", [f"L{i} {'GDN' if i in gdn_layers else 'attn'}" for i in ls],
                       {s: [100 * get(i, s, key) for i in ls] for s in sets},
                       title=f"{label}: relative change after {steps} steps (%)",
                       ylabel="‖after − before‖ / ‖before‖ (%)")
        if p:
            plots.append(p)
    if gdn_layers and len(b.checkpoints) > 1:
        series = {f"L{i} {s}": (list(b.checkpoints), [100 * get(i, s, "state_change", cp) for cp in b.checkpoints])
                  for i in gdn_layers for s in (trig, gen)}
        p = C.line_plot(out / "gdn_state_vs_steps.png", series, title="GDN recurrent state change vs training steps",
                        xlabel="training steps", ylabel="relative change (%)")
        if p:
            plots.append(p)
    result = {"experiment": "gdn-state", "answer": answer, "rows": rows, "plots": plots,
              "before": m0, "after": m1, "at_checkpoint": ms, "gdn_layers": gdn_layers, "layer_types": layer_types,
              "train": {"steps": steps, "optimizer_state_bytes": t["optimizer_state_bytes"],
                                  "seconds_per_step_last_chunk": t["seconds_per_step"]}, "losses": losses,
              "weight_change": wd}
    setup = dict(C.base_setup(rig, args), behaviour=b.behaviour, checkpoints=b.checkpoints, lr=b.lr, rank=b.rank,
                 replay_ratio=b.replay_ratio, inputs_per_set=b.n_inputs, text_window=b.text_window,
                 input_sets={k: len(v) for k, v in sets.items()})
    C.finish(result, log, quick=args.quick, budget=b, setup=setup)
    pctf = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    cos = lambda v: f"{v:.2f}"  # noqa: E731
    cols = [("step", "step"), ("layer", "layer"), ("kind", "kind"), ("inputs", "inputs"), ("state_change", "Δ GDN state", pctf),
            ("state_coherence", "ΔS coherence", cos), ("mixer_change", "Δ mixer output", pctf),
            ("mixer_coherence", "Δ mixer coherence", cos), ("layer_change", "Δ layer output", pctf),
            ("weight_change_max", "max Δ weight", pctf), ("A_log_change", "Δ A_log", pctf),
            ("dt_bias_change", "Δ dt_bias", pctf)]
    notes = [f"Behaviour before: held-out pass {m0['heldout_pass']:.2f}, controls {m0['control_pass']:.2f}, ppl "
             f"{m0['ppl']:.2f}; after: {m1['heldout_pass']:.2f}, {m1['control_pass']:.2f}, {m1['ppl']:.2f}.",
             "transformers runs GDN through its torch fallback here (no flash-linear-attention on CPU); "
             f"dtype {rig.dtype_name}, so the comparison has no rounding noise (before/after are deterministic).",
             "Input sets: trigger = the behaviour's held-out test prompts; other = its control prompts and "
             f"{b.other}'s held-out prompts; general text = consecutive {b.text_window}-token windows of the held-out text."]
    return C.write_outputs(out, result, title=TITLE, question=QUESTION, columns=cols, notes=notes)
