"""plasticity.Apollo as a torch optimizer: groups, state_dict, fused mode, skips."""

import copy

import pytest
import torch

from plasticity import Apollo


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(48, 64), torch.nn.GELU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 40)
    )


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 48, generator=g), torch.randn(16, 40, generator=g)) for _ in range(n)]


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_apollo_and_adamw_params_are_routed():
    model = _model()
    opt = Apollo(model.parameters(), lr=1e-3, rank=8)
    kinds = {n: opt.uses_apollo(p) for n, p in model.named_parameters()}
    assert kinds == {"0.weight": True, "0.bias": False, "2.weight": False, "2.bias": False,
                     "3.weight": True, "3.bias": False}
    _train(model, opt, _batches(3))
    w = model[0].weight  # 64×48: m ≥ n, moments m×r
    assert opt.state[w]["exp_avg"].shape == (64, 8)
    w3 = model[3].weight  # 40×64: m < n, moments r×n
    assert opt.state[w3]["exp_avg"].shape == (8, 64)
    assert opt.state[model[0].bias]["exp_avg"].shape == (64,)


def test_param_groups_with_own_settings():
    model = _model()
    opt = Apollo(
        [
            {"params": [model[0].weight], "rank": 1, "scale_type": "tensor"},
            {"params": [model[3].weight], "apollo": False, "lr": 0.0},
            {"params": [p for n, p in model.named_parameters() if n.endswith("bias") or n.startswith("2.")]},
        ],
        lr=1e-3,
        rank=8,
    )
    before = model[3].weight.detach().clone()
    _train(model, opt, _batches(2))
    assert opt.state[model[0].weight]["exp_avg"].shape == (64, 1)
    assert torch.equal(model[3].weight, before), "lr 0 group must not move"


def test_state_dict_round_trip_resumes_exactly():
    batches = _batches(12)
    a = _model()
    opt_a = Apollo(a.parameters(), lr=1e-3, rank=8, update_proj_gap=4)
    _train(a, opt_a, batches[:6])
    saved_model = copy.deepcopy(a.state_dict())
    saved_opt = copy.deepcopy(opt_a.state_dict())
    _train(a, opt_a, batches[6:])

    b = _model(seed=123)
    b.load_state_dict(saved_model)
    opt_b = Apollo(b.parameters(), lr=1e-3, rank=8, update_proj_gap=4)
    opt_b.load_state_dict(saved_opt)
    _train(b, opt_b, batches[6:])
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), f"{n} differs after resuming"


def test_fused_mode_matches_step_mode_and_frees_each_gradient():
    batches = _batches(5)
    a, b = _model(), _model()
    opt_a = Apollo(a.parameters(), lr=1e-3, rank=8)
    _train(a, opt_a, batches)

    peak = {"bytes": 0}

    def watch(_p):
        live = sum(q.grad.numel() * q.grad.element_size() for q in b.parameters() if q.grad is not None)
        peak["bytes"] = max(peak["bytes"], live)

    # Registered before the optimizer's hooks: sees each gradient as it completes.
    hooks = [p.register_post_accumulate_grad_hook(watch) for p in b.parameters()]
    opt_b = Apollo(b.parameters(), lr=1e-3, rank=8, fused=True)
    for x, y in batches:
        torch.nn.functional.mse_loss(b(x), y).backward()
        assert all(p.grad is None for p in b.parameters()), "fused mode left a gradient alive"
        opt_b.step()  # no-op in fused mode: every parameter was already stepped
    for h in hooks:
        h.remove()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-7), n
    largest = max(p.numel() * p.element_size() for p in b.parameters())
    assert 0 < peak["bytes"] <= largest, f"peak gradient memory {peak['bytes']} > one parameter ({largest})"


def test_non_finite_gradient_is_skipped_and_reported(caplog):
    model = _model()
    opt = Apollo(model.parameters(), lr=1e-3, rank=8)
    _train(model, opt, _batches(2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = copy.deepcopy(opt.state_dict())
    x, y = _batches(1, seed=9)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[3, 5] = float("nan")
    model[0].bias.grad[0] = float("inf")
    opt.step()
    assert opt.skipped == 2
    assert "non-finite" in caplog.text
    assert torch.equal(model[0].weight, before["0.weight"])
    assert torch.equal(model[0].bias, before["0.bias"])
    st = opt.state_dict()["state"]
    for idx in (0, 1):
        assert st[idx]["step"] == state_before["state"][idx]["step"]
        assert torch.equal(st[idx]["exp_avg"], state_before["state"][idx]["exp_avg"])
    # Other parameters did step.
    assert not torch.equal(model[3].weight, before["3.weight"])


def _half_run(dtype, lr, stochastic, steps=50):
    """Same gradient every step on 16-bit weights vs the f32 run from the same start."""
    torch.manual_seed(0)
    w = torch.nn.Parameter((torch.randn(96, 64) * 0.05).to(dtype))
    start = w.detach().float().clone()
    ref = torch.nn.Parameter(start.clone())
    opt = Apollo([w], lr=lr, rank=8, stochastic_rounding=stochastic)
    opt_ref = Apollo([ref], lr=lr, rank=8)
    g = torch.randn(96, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    for _ in range(steps):
        w.grad, ref.grad = g, g.float()
        opt.step()
        opt_ref.step()
    assert w.dtype == dtype and opt.state[w]["exp_avg"].dtype == torch.float32
    d16, d32 = w.detach().float() - start, ref.detach() - start
    cos = torch.nn.functional.cosine_similarity(d16.flatten(), d32.flatten(), dim=0).item()
    return cos, (d16.norm() / d32.norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_follow_f32(dtype):
    cos, ratio = _half_run(dtype, 1e-2, stochastic=False)
    assert cos > 0.999 and abs(ratio - 1) < 0.01, (cos, ratio)


def test_stochastic_rounding_keeps_sub_ulp_updates_in_bf16():
    # lr 1e-4 on bf16 weights of std 0.05: each update is far below half an ulp.
    cos_n, ratio_n = _half_run(torch.bfloat16, 1e-4, stochastic=False)
    cos_s, ratio_s = _half_run(torch.bfloat16, 1e-4, stochastic=True)
    assert ratio_n < 0.7, f"nearest rounding should lose much of the update (kept {ratio_n:.2f})"
    assert cos_s > 0.95 and abs(ratio_s - 1) < 0.1, (cos_s, ratio_s)


def test_default_alpha_is_sqrt_d_over_r():
    # With alpha=None the update equals the one with alpha=√(d/r) given explicitly.
    torch.manual_seed(0)
    w0 = torch.randn(64, 32)
    a = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(w0.clone())
    opt_a = Apollo([a], lr=1e-2, rank=8)
    opt_b = Apollo([b], lr=1e-2, rank=8, alpha=(32 / 8) ** 0.5)
    g = torch.randn(64, 32)
    a.grad, b.grad = g.clone(), g.clone()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)
    c = torch.nn.Parameter(w0.clone())
    opt_c = Apollo([c], lr=1e-2, rank=8, alpha=1.0)
    c.grad = g.clone()
    opt_c.step()
    assert not torch.equal(a, c)


def test_optimizer_state_is_2rd():
    w = torch.nn.Parameter(torch.randn(512, 128))
    opt = Apollo([w], lr=1e-3, rank=16)
    w.grad = torch.randn_like(w)
    opt.step()
    assert opt.state_bytes() == 2 * 16 * 512 * 4
