"""plasticity.Apollo against the official apollo-torch, step for step.

apollo-torch draws its projection with torch's RNG; ours regenerates from a
counter-based seed. To compare the algorithms rather than the RNGs, the very
matrix apollo-torch drew is injected into ours through the test hook
``Apollo.inject_projection`` before every step, so both see the same P, across
projection refreshes too.
"""

import math

import pytest
import torch

apollo_torch = pytest.importorskip("apollo_torch")

from plasticity import Apollo  # noqa: E402

STEPS = 410  # refreshes at 0, 200 and 400


def _reference(p, rank, scale_type, alpha, wd, gap):
    group = dict(
        params=[p], rank=rank, proj="random", scale_type=scale_type, scale=alpha**2,
        update_proj_gap=gap, proj_type="std",
    )
    return apollo_torch.APOLLOAdamW([group], lr=1e-3, weight_decay=wd)


@pytest.mark.parametrize(
    "shape,rank,scale_type",
    [((96, 64), 8, "channel"), ((64, 96), 8, "channel"), ((80, 80), 16, "channel"),
     ((96, 64), 1, "tensor"), ((64, 96), 1, "tensor")],
)
def test_updates_agree_over_400_steps(shape, rank, scale_type):
    torch.manual_seed(0)
    w0 = torch.randn(shape) * 0.1
    ref = torch.nn.Parameter(w0.clone())
    ours = torch.nn.Parameter(w0.clone())
    alpha, wd, gap = 2.0, 0.1, 200
    opt_ref = _reference(ref, rank, scale_type, alpha, wd, gap)
    opt = Apollo([ours], lr=1e-3, weight_decay=wd, rank=rank, scale_type=scale_type, alpha=alpha,
                 update_proj_gap=gap, eps=1e-6)
    assert opt.uses_apollo(ours)
    gen = torch.Generator().manual_seed(1)
    limited = 0
    worst = 0.0
    for k in range(STEPS):
        # Mostly unit gradients with bursts, so the norm-growth limiter fires.
        amp = 30.0 if k % 37 == 5 else 1.0
        g = torch.randn(shape, generator=gen) * amp
        ref.grad = g.clone()
        ours.grad = g.clone()
        opt_ref.step()
        proj = opt_ref.state[ref]["projector"].ortho_matrix.float()
        d = min(shape)
        if proj.shape != (rank, d):
            proj = proj.t()
        assert proj.shape == (rank, d)
        opt.inject_projection(ours, proj)
        opt.step()
        if opt.state[ours]["limiter"] > 1.0:
            limited += 1
        du_ref = ref.detach() - w0
        du = ours.detach() - w0
        err = ((du - du_ref).norm() / du_ref.norm()).item()
        worst = max(worst, err)
    assert opt.state[ours]["step"] == STEPS
    assert limited > 0, "the norm-growth limiter never fired"
    assert worst < 1e-5, f"relative update difference {worst:.2e}"


def test_seeded_projection_is_gaussian_with_variance_one_over_r():
    from plasticity import _plasticity as rs

    r, d = 256, 1024
    p = torch.empty(r, d)
    rs.fill_projection(p, 5, 0)
    assert abs(p.mean().item()) < 2e-3
    assert math.isclose(p.var().item(), 1 / r, rel_tol=0.02)
    q = torch.empty(r, d)
    rs.fill_projection(q, 5, 1)
    assert not torch.equal(p, q)
