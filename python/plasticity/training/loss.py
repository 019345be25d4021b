"""The training losses: the context-frozen cross-entropy (batched and one by one), the full one it
is tested against, and held-out perplexity.

Context-frozen (docs/design/questions.md, "Online training"): for an example (context c_0..c_{n-1},
decision d_0..d_{m-1}) the prefix c_0..c_{n-2} runs under ``no_grad`` and
leaves its keys/values (and, for Gated DeltaNet layers, conv + recurrent
state) in the cache as constants; then the segment [c_{n-1}, d_0..d_{m-2}]
runs with autograd over that cache, and its logits predict d_0..d_{m-1}. So
every decision token's loss (the first one included) gets gradient through
all layers, and nothing computed from the frozen prefix carries gradient.
This is exactly the gradient of a full forward in which every activation at
positions < n-1 is treated as a constant (tests/training/test_training_frozen.py).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

EVAL_ROWS = 8  # held-out windows per forward: large enough GEMMs, small enough logits (8×128×vocab)


def frozen_context_loss(model, context: list[int], decision: list[int], device="cpu") -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the decision tokens, context frozen. Returns (loss, n_tokens)."""
    if len(context) < 1 or len(decision) < 1:
        raise ValueError("an example needs ≥ 1 context token and ≥ 1 decision token")
    past = None
    if len(context) > 1:
        with torch.no_grad():
            out = _decoder(model)(input_ids=torch.tensor([context[:-1]], device=device), use_cache=True)
            past = out.past_key_values
    if past is not None:
        _no_inplace_state_updates(past)
    seg = torch.tensor([[context[-1]] + decision[:-1]], device=device)
    out = model(input_ids=seg, past_key_values=past, use_cache=past is not None)
    logits = out.logits[0].float()
    return F.cross_entropy(logits, torch.tensor(decision, device=device)), len(decision)


def batchable(model) -> bool:
    """Whether the examples of a step can run as one padded batch: attention-only models. (A
    linear-attention layer's recurrent state would run over the padding; those go one by one.)"""
    cfg = getattr(model, "config", None)
    types = getattr(cfg, "layer_types", None) or ()
    return not any("linear" in str(t) for t in types)


def _decoder(model):
    """The model without its LM head (transformers' ``base_model``), or the model itself."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def frozen_context_loss_batch(model, items: list[tuple[list[int], list[int]]], device="cpu",
                              times: dict | None = None) -> tuple[torch.Tensor, int]:
    """The mean over ``items`` of :func:`frozen_context_loss`, computed as one padded batch: one
    no-grad pass over the frozen prefixes (left-padded, so every prefix ends at the same column),
    one pass with autograd over the segments (right-padded), the padding masked out of attention
    and out of the loss. Returns (loss, decision tokens); ``times`` gets the seconds of the
    context and decision passes added to its "context" and "decision" keys."""
    t0 = time.perf_counter()
    for c, d in items:
        if len(c) < 1 or len(d) < 1:
            raise ValueError("an example needs ≥ 1 context token and ≥ 1 decision token")
    B = len(items)
    pre = [len(c) - 1 for c, _ in items]
    Lc = max(pre)
    segs = [[c[-1]] + d[:-1] for c, d in items]
    Ls = max(len(s) for s in segs)
    past, mask_c = None, torch.zeros(B, 0, dtype=torch.long)
    if Lc > 0:
        ids = torch.zeros(B, Lc, dtype=torch.long)
        mask_c = torch.zeros(B, Lc, dtype=torch.long)
        for i, (c, _) in enumerate(items):
            if pre[i]:
                ids[i, Lc - pre[i]:] = torch.tensor(c[:-1])
                mask_c[i, Lc - pre[i]:] = 1
        pos = (mask_c.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            # the decoder alone: the prefix's logits are never used (the lm_head is ~20% of a small model)
            past = _decoder(model)(input_ids=ids.to(device), attention_mask=mask_c.to(device),
                                   position_ids=pos.to(device), use_cache=True).past_key_values
    t1 = time.perf_counter()
    sids = torch.zeros(B, Ls, dtype=torch.long)
    mask_s = torch.zeros(B, Ls, dtype=torch.long)
    tgt = torch.full((B, Ls), -100, dtype=torch.long)
    for i, (s, (_, d)) in enumerate(zip(segs, items)):
        sids[i, :len(s)] = torch.tensor(s)
        mask_s[i, :len(s)] = 1
        tgt[i, :len(d)] = torch.tensor(d)
    pos = torch.tensor(pre).view(B, 1) + torch.arange(Ls).view(1, Ls)
    out = model(input_ids=sids.to(device), attention_mask=torch.cat([mask_c, mask_s], 1).to(device),
                position_ids=pos.to(device), past_key_values=past, use_cache=past is not None)
    logits = out.logits.float()
    ce = F.cross_entropy(logits.reshape(B * Ls, -1), tgt.reshape(-1).to(device), ignore_index=-100,
                         reduction="none").view(B, Ls)
    lens = torch.tensor([len(d) for _, d in items], dtype=ce.dtype, device=ce.device)
    loss = (ce.sum(1) / lens).mean()
    if times is not None:
        times["context"] = times.get("context", 0.0) + t1 - t0
        times["decision"] = times.get("decision", 0.0) + time.perf_counter() - t1
    return loss, int(lens.sum())


def _no_inplace_state_updates(cache) -> None:
    """transformers' linear-attention cache layers copy the new recurrent state
    *into* the old tensor, which the decision segment's autograd graph saved as
    the (frozen) initial state; make them rebind instead."""
    for layer in getattr(cache, "layers", ()):
        if hasattr(layer, "recurrent_states") and hasattr(layer, "update_recurrent_state"):
            def upd(recurrent_states, state_idx=0, _layer=layer, **kw):
                if not _layer.is_recurrent_states_initialized[state_idx]:
                    _layer.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
                _layer.recurrent_states[state_idx] = recurrent_states
                return recurrent_states
            layer.update_recurrent_state = upd


def full_loss(model, context: list[int], decision: list[int], device="cpu") -> tuple[torch.Tensor, int]:
    """Full backprop through context and decision (the baseline the bench compares against)."""
    ids = torch.tensor([context + decision], device=device)
    logits = model(input_ids=ids).logits[0, len(context) - 1: -1].float()
    return F.cross_entropy(logits, torch.tensor(decision, device=device)), len(decision)


@torch.no_grad()
def heldout_perplexity(model, windows: torch.Tensor, after_chunk=None) -> float:
    """exp(mean NLL) over ``windows`` (rows of token ids), EVAL_ROWS rows per forward (one batched
    forward each, not one per window); ``after_chunk(seconds)`` runs after each forward."""
    total, count = 0.0, 0
    for rows in windows.split(EVAL_ROWS):
        t0 = time.monotonic()
        logits = model(input_ids=rows).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += rows[:, 1:].numel()
        del logits
        if after_chunk is not None:
            after_chunk(time.monotonic() - t0)
    return math.exp(total / count)
