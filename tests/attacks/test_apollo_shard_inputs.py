"""Hostile calls of the tensor-parallel Apollo step (``apollo_step_sharded``, ``Apollo.shard``):
each raises with the problem named, and none writes the weight or the moments."""

from __future__ import annotations

import pytest
import torch

from plasticity import Apollo
from plasticity import _plasticity as rs

KW = dict(step=0, seed=1, prev_norm=None, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0,
          correct_bias=True, rank=8, scale_type="channel", alpha=None, update_proj_gap=200,
          norm_growth_limit=1.01, stochastic_rounding=False, projection_precision="f32")
WS = rs.Workspace(1)


def _alone(kind, n):  # a group of one: the sum is the buffer itself
    return None


def _call(w, g, m1, m2, **over):
    kw = dict(KW, workspace=WS, axis="cols", offset=0, global_shape=tuple(w.shape), all_reduce=_alone,
              scratch_f32=torch.zeros(8 * 64), scratch_f64=torch.zeros(64, dtype=torch.float64))
    kw.update(over)
    return rs.apollo_step_sharded(w, g, m1, m2, **kw)


def _args(m=64, n=48):
    return torch.randn(m, n), torch.randn(m, n), torch.zeros(m, 8), torch.zeros(m, 8)


def _untouched(w, w0, m1):
    assert torch.equal(w, w0) and not m1.any(), "written"


def test_a_whole_matrix_as_its_own_shard_equals_the_plain_step():
    w, g, m1, m2 = _args()
    w2, m1b, m2b = w.clone(), m1.clone(), m2.clone()
    _call(w, g, m1, m2)
    rs.apollo_step(w2, g, m1b, m2b, workspace=WS, **KW)
    assert torch.equal(w, w2) and torch.equal(m1, m1b)


@pytest.mark.parametrize("over,msg", [
    ({"axis": "diagonal"}, "axis"),
    ({"offset": 1}, "not a shard"),                    # columns 1..49 of a 48-column matrix
    ({"global_shape": (32, 48), "axis": "cols"}, "not a shard"),  # 64 rows in a 32-row matrix
    ({"global_shape": (64, 96), "axis": "rows"}, "not a shard"),  # rows cut, but the columns differ
    ({"rank": 0}, "rank"),
], ids=["unknown_axis", "offset_past_the_end", "more_rows_than_the_matrix", "rows_block_wrong_width", "rank_zero"])
def test_not_a_shard(over, msg):
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match=msg):
        _call(w, g, m1, m2, **over)
    _untouched(w, w0, m1)


def test_moments_of_the_wrong_geometry():
    # a 64×48 column block of a wide 64×200 matrix: moments are r × 48 (the whole matrix's side)
    w, g, _, _ = _args()
    m1, m2 = torch.zeros(64, 8), torch.zeros(64, 8)
    w0 = w.clone()
    with pytest.raises(ValueError, match="moments"):
        _call(w, g, m1, m2, global_shape=(64, 200))
    _untouched(w, w0, m1)


def test_scratch_too_small_is_refused_before_any_write():
    # d split (a column block of a tall 64×60 matrix): R (64 × 8) must be summed
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="scratch holds"):
        _call(w, g, m1, m2, global_shape=(64, 60), scratch_f32=torch.zeros(10))
    _untouched(w, w0, m1)


@pytest.mark.parametrize("which", ["weight", "grad", "exp_avg"])
def test_scratch_overlapping_a_step_tensor(which):
    w, g, m1, m2 = _args()
    w0 = w.clone()
    target = {"weight": w, "grad": g, "exp_avg": m1}[which]
    with pytest.raises(ValueError, match="share memory"):
        _call(w, g, m1, m2, scratch_f32=target.view(-1))
    assert torch.equal(w, w0)


def test_scratch_f64_overlapping_the_weight():
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="scratch_f64 overlaps weight"):
        _call(w, g, m1, m2, scratch_f64=w.view(-1).view(torch.float64))
    assert torch.equal(w, w0)


def test_scratch_f64_of_another_dtype():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="float64"):
        _call(w, g, m1, m2, scratch_f64=torch.zeros(64, dtype=torch.float32))


def test_a_failing_all_reduce_stops_the_step():
    def broken(kind, n):
        raise RuntimeError("peer went away")

    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="peer went away"):
        _call(w, g, m1, m2, global_shape=(64, 60), all_reduce=broken)
    _untouched(w, w0, m1)


def test_cuda_or_non_contiguous_blocks_are_refused():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="contiguous"):
        _call(w.t(), g.t(), m1, m2)


@pytest.mark.parametrize("kw,msg", [
    ({"axis": "depth", "offset": 0, "global_shape": (64, 48)}, "axis"),
    ({"axis": "rows", "offset": 40, "global_shape": (64, 48)}, "not a shard"),
    ({"axis": "rows", "offset": -1, "global_shape": (64, 48)}, "not a shard"),
    ({"axis": "cols", "offset": 0, "global_shape": (65, 48)}, "not a shard"),
], ids=["unknown_axis", "rows_past_the_end", "negative_offset", "other_height"])
def test_optimizer_refuses_a_bad_shard(kw, msg):
    p = torch.nn.Parameter(torch.randn(32, 48))
    opt = Apollo([p], rank=8)
    with pytest.raises(ValueError, match=msg):
        opt.shard(p, **kw)


def test_optimizer_refuses_a_shard_declared_after_stepping():
    p = torch.nn.Parameter(torch.randn(32, 48))
    opt = Apollo([p], rank=8)
    p.grad = torch.randn(32, 48)
    opt.step()
    with pytest.raises(ValueError, match="before the first step"):
        opt.shard(p, axis="rows", offset=0, global_shape=(64, 48))
