"""Context-frozen training at the transformers level (no server): the trainable
view module, the context-frozen gradient, and which parameters get gradient."""

from __future__ import annotations

import pytest
import torch

from models import model_dir

from plasticity.training import core, views

MODELS = ["qwen3-tiny", "qwen3_5-tiny"]


def _load(name):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir(name), dtype=torch.float32, attn_implementation="sdpa")
    return m.eval()


def _fake_vllm_live(hf):
    """vLLM's layout built from a transformers model: fused qkv/gate_up/in_proj_qkvz/in_proj_ba by
    row concatenation (what vLLM's loader does), every other tensor under the same name."""
    sd = dict(hf.named_parameters())
    live, used = {}, set()
    for name, p in sd.items():
        leaf = views._leaf_of(name)
        if leaf in views._PART_OF:
            fused, _ = views._PART_OF[leaf]
            parent = name.rsplit(".", 3)[0] if False else name[: name.rfind("." + leaf + ".")]
            key = f"{parent}.{fused}.weight"
            if key not in live:
                parts = [sd[f"{parent}.{q}.weight"] for q in views.PACKED[fused] if f"{parent}.{q}.weight" in sd]
                live[key] = torch.cat([t.detach() for t in parts]).contiguous()
        else:
            live[name] = p.detach().clone()
    return live


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    hf = _load(request.param)
    live = _fake_vllm_live(hf)
    model = views.build_meta_model(hf.config)
    names = [n for n, _ in model.named_parameters()]
    where, _ = views.bind(model, live, model.config, views.select(names, ["all"]))
    return request.param, hf, model, live, where


def test_views_alias_live_storage_zero_copy(pair):
    name, hf, model, live, where = pair
    assert not views.check_zero_copy(model, live, where)
    fused = [n for n, (src, _) in where.items() if src.endswith(("qkv_proj.weight", "gate_up_proj.weight",
                                                                 "in_proj_qkvz.weight", "in_proj_ba.weight"))]
    assert fused, "no fused projection was sliced"
    total_live = sum(t.numel() for k, t in live.items())
    total_view = sum(p.numel() for p in model.parameters())
    assert total_view == total_live  # every live element is seen exactly once, nothing copied


def test_view_model_matches_and_sees_in_place_writes(pair):
    name, hf, model, live, where = pair
    ids = torch.tensor([[5, 17, 300, 42, 7, 99, 1000, 3]])
    with torch.no_grad():
        a = hf(input_ids=ids).logits
        b = model(input_ids=ids).logits
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        src = next(s for s in live if s.endswith("layers.0.mlp.gate_up_proj.weight"))
        live[src].mul_(-1.0)  # a write to the live tensor ...
        c = model(input_ids=ids).logits  # ... is seen by the next forward of the view module
        assert not torch.allclose(b, c)
        live[src].mul_(-1.0)
        torch.testing.assert_close(model(input_ids=ids).logits, b, rtol=0, atol=0)


def _detach_context_hooks(model, n_frozen):
    """Reference: a full forward where every parameterised module's output at the
    first n_frozen positions is a constant (so the context's K/V, and everything
    else computed there, carries no gradient)."""
    hooks = []

    def hook(mod, args, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[1] > n_frozen:  # [b, seq, ...]
            return torch.cat([out[:, :n_frozen].detach(), out[:, n_frozen:]], dim=1)
        return out

    for n, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)) and not n.endswith("conv1d"):
            hooks.append(m.register_forward_hook(hook))
    return hooks


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


CTX = [11, 250, 31, 77, 402, 9, 18, 600, 44, 2, 130, 71]
DEC = [88, 19, 505, 23, 61, 7]


def test_frozen_gradient_equals_detached_context_reference(pair):
    name, hf, model, live, where = pair
    for p in model.parameters():
        p.requires_grad_(True)
    got = _grads(model, lambda: core.frozen_context_loss(model, CTX, DEC)[0])
    hooks = _detach_context_hooks(model, len(CTX) - 1)
    try:
        ref = _grads(model, lambda: core.full_loss(model, CTX, DEC)[0])
    finally:
        for h in hooks:
            h.remove()
    full = _grads(model, lambda: core.full_loss(model, CTX, DEC)[0])
    gdn_cross_pos = ("conv1d.weight", "A_log", "dt_bias")  # used across positions inside a GDN layer
    compared = differs = 0
    for n, g in got.items():
        assert g is not None and torch.isfinite(g).all(), n
        if n.endswith(gdn_cross_pos):
            continue
        torch.testing.assert_close(g, ref[n], rtol=2e-4, atol=2e-6, msg=lambda m: f"{n}: {m}")
        compared += 1
        if not torch.allclose(g, full[n], rtol=1e-3, atol=1e-6):
            differs += 1
    assert compared > 20
    # The test has teeth: gradients through the context (full backprop) are different.
    assert differs > 5


def test_only_selected_parameters_get_gradient(pair):
    name, hf, model, live, where = pair
    names = [n for n, _ in model.named_parameters()]
    for pats in (["q_proj"], ["gdn-gates"] if name == "qwen3_5-tiny" else ["attention"]):
        sel = views.select(names, pats)
        assert sel
        for n, p in model.named_parameters():
            p.requires_grad_(n in sel)
        g = _grads(model, lambda: core.frozen_context_loss(model, CTX, DEC)[0])
        for n, v in g.items():
            if n in sel:
                assert v is not None and v.abs().sum() > 0, f"{n} selected but got no gradient"
            else:
                assert v is None, f"{n} not selected but got a gradient"


def test_segmented_forward_matches_full_forward(pair):
    name, hf, model, live, where = pair
    with torch.no_grad():
        out = model(input_ids=torch.tensor([CTX[:-1]]), use_cache=True)
        seg = model(input_ids=torch.tensor([[CTX[-1]] + DEC[:-1]]), past_key_values=out.past_key_values,
                    use_cache=True).logits
        full = model(input_ids=torch.tensor([CTX + DEC])).logits[:, len(CTX) - 1: -1]
    torch.testing.assert_close(seg, full, rtol=1e-4, atol=1e-4)
