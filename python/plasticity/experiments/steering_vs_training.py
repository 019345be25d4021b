"""steering-vs-training: a behaviour given by a steering vector vs the same behaviour trained in.

1. **Extract** a steering vector for the shipped behaviour (ticket-reply by default) from
   contrastive pairs with ``steering.extract`` (repeng's conventions, ``mean_diff``): positive =
   the chat prompt followed by the first ``pair_tokens`` tokens of the behaviour's reply, negative =
   the same prompt followed by the first tokens of the unsteered model's own greedy reply.
2. **Pick** the layers × scale among the candidates by the data: the one whose steered model gives
   the training prompts' reply the lowest NLL (training prompts only; held-out prompts stay unseen).
   The vector is added to the chosen decoder layers' outputs at every position (as the server does).
3. **Train it in** (offline version of ``plasticity steer train-in``): sample steered continuations
   (temperature 1, seeded) of the training prompts and train the *unsteered* weights toward them
   through ``Trainer.step`` (context-frozen, replay), then drop the vector.
4. **Compare** on held-out prompts: behaviour tests, reply NLL, KL(steered ‖ model) estimated on
   steered samples (as train-in does: before = base model, after = trained model), greedy agreement
   between the steered base model and the trained unsteered model, and held-out perplexity of general
   text: base, steered (vector on), trained (vector off).
"""

from __future__ import annotations

from . import common as C

QUICK = C.Budget(behaviour="ticket-reply", n_pairs=4, pair_tokens=1, layer_sets=[[1, 2]], scales=[0.2],
                 train_prompts=2, epochs=1, samples_per_heldout=1, max_new_tokens=8, lr=1e-3, rank=32,
                 replay_ratio=0.25, **C.QUICK_EVAL)
FULL = C.Budget(behaviour="ticket-reply", n_pairs=48, pair_tokens=1, layer_sets=[[1], [2], [1, 2]],
                scales=[0.1, 0.2, 0.35, 0.5], train_prompts=48, epochs=2, samples_per_heldout=2, max_new_tokens=16,
                lr=1e-3, rank=32, replay_ratio=0.25, **C.FULL_EVAL)
# SmolLM2 has 30 layers: candidates in its early, middle and late-middle layers.
REAL = C.Budget(behaviour="ticket-reply", n_pairs=48, pair_tokens=1, layer_sets=[[6], [10], [15], [20], [8, 10, 12]],
                scales=[0.25, 0.5, 1.0, 2.0], train_prompts=48, epochs=2, samples_per_heldout=2, max_new_tokens=16,
                lr=1e-4, rank=64, replay_ratio=0.25, **C.REAL_EVAL)
BUDGETS = C.Budgets(QUICK, FULL, REAL)

TITLE = "steering vector vs the same behaviour trained into the weights"
QUESTION = ("Does a steering vector give the behaviour, and when its effect is trained into the weights (the vector "
            "dropped), how well do the two agree and what are the side effects on held-out perplexity?")


class Steer:
    """Context manager: add ``scale · v[l]`` to the output of decoder layer l (every position)."""

    def __init__(self, model, dirs: dict, scale: float):
        self.model, self.dirs, self.scale, self.hooks = model, dirs, float(scale), []

    def __enter__(self):
        import numpy as np
        import torch

        for l, v in self.dirs.items():
            t = torch.from_numpy(np.asarray(v, np.float32)) * self.scale

            def hook(mod, args, out, t=t):
                if isinstance(out, tuple):
                    return (out[0] + t.to(out[0].dtype),) + tuple(out[1:])
                return out + t.to(out.dtype)

            self.hooks.append(self.model.model.layers[int(l)].register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def _sample(model, ids: list[int], n: int, seed: int, eos: int) -> list[int]:
    """Temperature-1 sample of up to n tokens (stops at eos, which is kept), seeded."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    out, past = [], None
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            o = model(input_ids=x, past_key_values=past, use_cache=True)
            past = o.past_key_values
            p = torch.softmax(o.logits[0, -1].float(), -1)
            t = int(torch.multinomial(p, 1, generator=g))
            out.append(t)
            if t == eos:
                break
            x = torch.tensor([[t]])
    return out


def _greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    out, past = [], None
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            o = model(input_ids=x, past_key_values=past, use_cache=True)
            past = o.past_key_values
            t = int(o.logits[0, -1].argmax())
            out.append(t)
            x = torch.tensor([[t]])
    return out


def _logprobs(model, ids: list[int], start: int) -> list[float]:
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return [float(lp[t - 1, ids[t]]) for t in range(start, len(ids))]


def _kl(steered: list[list[float]], other: list[list[float]]) -> float:
    from plasticity.steering.train_in import kl_estimate

    return kl_estimate(steered, other)


def run(args) -> dict:
    from plasticity.steering import extract as X

    rig, log, out, b = C.start(args, "steering-vs-training", BUDGETS)
    m = rig.model
    train = rig.behaviour_examples(b.behaviour, "train")
    held, ctrl = rig.tests(b.behaviour)
    held, ctrl = held[:b.max_tests], ctrl[:b.max_controls]
    rig.reset()

    # 1. contrastive pairs and the vector
    gen = rig.generator()
    pairs = []
    for e in train[:b.n_pairs]:
        own = _greedy(m, e.context, b.pair_tokens)
        prompt = rig.tok.decode(e.context)
        pairs.append((prompt + rig.tok.decode(e.decision[:b.pair_tokens]), prompt + rig.tok.decode(own)))
    n_layers = len(m.model.layers)
    layers_all = sorted({l for ls in b.layer_sets for l in ls})
    dirs = X.extract(m, rig.tok, pairs, method="mean_diff", layers=layers_all)
    norms = {int(l): float((v ** 2).sum() ** 0.5) for l, v in dirs.items()}
    log(f"vector from {len(pairs)} pairs, norms {norms}")

    # 2. pick layers × scale on the training prompts
    pick_ex = train[:b.n_pairs]
    cands = []
    nll_plain = rig.decision_nll(pick_ex)
    for ls in b.layer_sets:
        for s in b.scales:
            with Steer(m, {l: dirs[l] for l in ls}, s):
                nll = rig.decision_nll(pick_ex)
            cands.append({"layers": ls, "scale": s, "train_reply_nll": nll})
    best = min(cands, key=lambda c: c["train_reply_nll"])
    vec = {l: dirs[l] for l in best["layers"]}
    log(f"chosen layers {best['layers']} scale {best['scale']}: train reply NLL {nll_plain:.3f} → "
        f"{best['train_reply_nll']:.3f}")

    def steer():
        return Steer(m, vec, best["scale"])

    def evaluate(label, steered: bool):
        ctx = steer() if steered else _Null()
        with ctx:
            r = rig.scores(b)
        log(f"{label}: held-out pass {r['heldout_pass']:.2f}, controls {r['control_pass']:.2f}, reply NLL "
            f"{r['decision_nll']:.3f}, ppl {r['ppl']:.2f}")
        return r

    base = evaluate("base (no vector)", False)
    steered = evaluate("steered (vector on)", True)

    # held-out steered samples and greedy outputs, taken once before training
    hprompts = [rig.chat_ids(t.messages) for t in held + ctrl]
    hs = []
    with steer():
        for i, ids in enumerate(hprompts):
            for k in range(b.samples_per_heldout):
                y = _sample(m, ids, b.max_new_tokens, 10_000 + 97 * i + k, rig.eos)
                full = ids + y
                hs.append((full, len(ids), _logprobs(m, full, len(ids))))
        greedy_steered = [_greedy(m, ids, b.max_new_tokens) for ids in hprompts]
    kl_before = _kl([h[2] for h in hs], [_logprobs(m, f, s) for f, s, _ in hs])
    greedy_base = [_greedy(m, ids, b.max_new_tokens) for ids in hprompts]

    # 3. train it in: steered samples of the training prompts as decisions
    examples = []
    with steer():
        for e_i in range(b.epochs):
            for i, e in enumerate(train[:b.train_prompts]):
                y = _sample(m, e.context, b.max_new_tokens, 1000 * e_i + i, rig.eos)
                if y:
                    examples.append(C.Example(f"steer-{e_i}-{i}", e.context, y))
    tr = rig.trainer(lr=b.lr, rank=b.rank, replay_ratio=b.replay_ratio)
    t = rig.teach(tr, examples, len(examples), label="train-in")
    rig.release()
    trained = evaluate("trained in (vector off)", False)
    kl_after = _kl([h[2] for h in hs], [_logprobs(m, f, s) for f, s, _ in hs])
    greedy_trained = [_greedy(m, ids, b.max_new_tokens) for ids in hprompts]
    rig.reset()

    def agree(a, bb):
        tok = sum(x == y for p, q in zip(a, bb) for x, y in zip(p, q)) / max(1, sum(len(p) for p in a))
        exact = sum(p == q for p, q in zip(a, bb)) / max(1, len(a))
        first = sum(p[:1] == q[:1] for p, q in zip(a, bb)) / max(1, len(a))
        return tok, exact, first

    ag_t = agree(greedy_trained, greedy_steered)
    ag_b = agree(greedy_base, greedy_steered)
    rows = []
    for name, r, ag, kl in (("base, no vector", base, ag_b, kl_before), ("base + steering vector", steered, None, 0.0),
                            ("trained in, no vector", trained, ag_t, kl_after)):
        rows.append(dict(model=name, heldout_pass=r["heldout_pass"], control_pass=r["control_pass"],
                         decision_nll=r["decision_nll"], ppl=r["ppl"], general_pass=r.get("general_pass"),
                         ppl_change=C.relative_change(base["ppl"], r["ppl"]),
                         kl_from_steered=kl, token_agreement=None if ag is None else ag[0],
                         exact_agreement=None if ag is None else ag[1], first_token_agreement=None if ag is None else ag[2]))
    kl_ratio = kl_after / kl_before if kl_before > 0 else None
    answer = (f"The {b.behaviour} steering vector (mean_diff from {len(pairs)} pairs, layers {best['layers']}, scale "
              f"{best['scale']:g} × its natural norm) gives {steered['heldout_pass']:.0%} of held-out prompts the "
              f"behaviour (base {base['heldout_pass']:.0%}; reply NLL {base['decision_nll']:.2f} → "
              f"{steered['decision_nll']:.2f}) at held-out ppl {C.pct(rows[1]['ppl_change'])}; trained in from "
              f"{len(examples)} steered samples ({t['steps']} steps) the unsteered weights give {trained['heldout_pass']:.0%} "
              f"(reply NLL {trained['decision_nll']:.2f}), agree with the steered model on {ag_t[0]:.0%} of greedy "
              f"tokens ({ag_t[1]:.0%} exact replies; base model vs steered: {ag_b[0]:.0%}), KL(steered ‖ model) "
              f"{kl_before:.3f} → {kl_after:.3f} nats/token"
              + (f" ({kl_ratio:.0%} of before)" if kl_ratio is not None else "")
              + f", at held-out ppl {C.pct(rows[2]['ppl_change'])} with the vector dropped.")
    labels = [r["model"] for r in rows]
    plots = [p for p in [
        C.panel_bars(out / "steer_outcome.png", ["base", "steered", "trained in"],
                     {"held-out pass": [r["heldout_pass"] for r in rows], "controls pass": [r["control_pass"] for r in rows],
                      "reply NLL": [r["decision_nll"] for r in rows],
                      "held-out ppl change (%)": [100 * r["ppl_change"] for r in rows]},
                     title="behaviour and side effects (steered = base + vector)"),
        C.panel_bars(out / "steer_agreement.png", ["base vs steered", "trained vs steered"],
                     {"greedy token agreement": [ag_b[0], ag_t[0]], "exact replies": [ag_b[1], ag_t[1]],
                      "KL(steered ‖ model), nats/token": [kl_before, kl_after]},
                     title="agreement with the steered model"),
        C.bar_plot(out / "steer_candidates.png", [f"L{c['layers']} ×{c['scale']:g}" for c in cands],
                   {"train reply NLL (steered)": [c["train_reply_nll"] for c in cands]},
                   title=f"candidates (no vector: {nll_plain:.2f})", ylabel="nats/token"),
    ] if p]
    result = {"experiment": "steering-vs-training", "answer": answer, "rows": rows, "plots": plots,
              "candidates": cands, "chosen": best, "vector_norms": norms, "kl_before": kl_before, "kl_after": kl_after,
              "kl_ratio": kl_ratio, "train": {k: v for k, v in t.items() if k != "losses"}, "losses": t["losses"],
              "samples": {"steered": rig.tok.decode(greedy_steered[0]), "trained": rig.tok.decode(greedy_trained[0]),
                          "base": rig.tok.decode(greedy_base[0])}}
    setup = dict(C.base_setup(rig, args), behaviour=b.behaviour, method="mean_diff", n_pairs=len(pairs),
                 pair_tokens=b.pair_tokens, layer_sets=b.layer_sets, scales=b.scales, train_prompts=b.train_prompts,
                 epochs=b.epochs, train_examples=len(examples), samples_per_heldout=b.samples_per_heldout,
                 heldout_prompts=len(hprompts), max_new_tokens=b.max_new_tokens, lr=b.lr, rank=b.rank,
                 replay_ratio=b.replay_ratio)
    C.finish(result, log, quick=args.quick, budget=b, setup=setup)
    p2 = lambda v: f"{v:.2f}"  # noqa: E731
    cols = [("model", "model"), ("heldout_pass", "held-out pass", p2), ("control_pass", "controls pass", p2),
            ("decision_nll", "reply NLL", lambda v: f"{v:.3f}"), ("ppl", "held-out ppl", p2),
            ("ppl_change", "Δ ppl", C.pct), ("general_pass", "general Qs", p2), ("kl_from_steered", "KL(steered‖model)", lambda v: f"{v:.3f}"),
            ("token_agreement", "greedy token agreement", p2), ("exact_agreement", "exact replies", p2),
            ("first_token_agreement", "first token", p2)]
    cand_md = "\n| layers | scale | train reply NLL (steered) |\n|---|---|---|\n" + "".join(
        f"| {c['layers']} | {c['scale']:g} | {c['train_reply_nll']:.3f} |\n" for c in cands)
    notes = [f"Vector norms per layer (mean_diff, natural scale): {norms}; scale multiplies them.",
             f"Candidate choice uses only training prompts (reply NLL without a vector: {nll_plain:.3f}).",
             "KL is a Monte-Carlo estimate over steered samples of the held-out prompts (trigger + control), "
             "mean over tokens of log p_steered − log p_model, as plasticity.steering.train_in computes it.",
             "Agreement: greedy continuations of the held-out prompts, position by position."]
    return C.write_outputs(out, result, title=TITLE, question=QUESTION, columns=cols, notes=notes, extra_md=cand_md)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
