"""Hostile calls of the tensor-parallel Apollo step (``apollo_step_sharded``, ``Apollo.shard``):
each raises with the problem named, and none writes a weight or a moment."""

from __future__ import annotations

import pytest
import torch

from plasticity import Apollo
from plasticity import _plasticity as rs

CFG = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, correct_bias=True, rank=8,
           scale_type="channel", alpha=None, update_proj_gap=200, norm_growth_limit=1.01,
           stochastic_rounding=False, projection_precision="f32")
WS = rs.Workspace(1)


def _alone(kind, buf):  # a group of one: the sum is the buffer itself
    return None


def _job(w, g, m1, m2, axis="cols", offset=0, global_shape=None):
    return (w, g, m1, m2, axis, offset, global_shape or tuple(w.shape), 0, 1, None)


def _call(jobs, all_reduce=_alone, **over):
    return rs.apollo_step_sharded(jobs, all_reduce=all_reduce, workspace=WS, **{**CFG, **over})


def _args(m=64, n=48):
    return torch.randn(m, n), torch.randn(m, n), torch.zeros(m, 8), torch.zeros(m, 8)


def _untouched(w, w0, m1):
    assert torch.equal(w, w0) and not m1.any(), "written"


def test_a_whole_matrix_as_its_own_shard_equals_the_plain_step():
    w, g, m1, m2 = _args()
    w2, m1b, m2b = w.clone(), m1.clone(), m2.clone()
    (applied, step, *_), = _call([_job(w, g, m1, m2)])
    rs.apollo_step(w2, g, m1b, m2b, workspace=WS, step=0, seed=1, prev_norm=None, **CFG)
    assert applied and step == 1 and torch.equal(w, w2) and torch.equal(m1, m1b)


@pytest.mark.parametrize("job,msg", [
    ({"axis": "diagonal"}, "axis"),
    ({"offset": 1}, "not a shard"),                               # columns 1..49 of a 48-column matrix
    ({"global_shape": (32, 48)}, "not a shard"),                  # 64 rows in a 32-row matrix
    ({"axis": "rows", "global_shape": (64, 96)}, "not a shard"),  # rows cut, but the columns differ
], ids=["unknown_axis", "offset_past_the_end", "more_rows_than_the_matrix", "rows_block_wrong_width"])
def test_not_a_shard(job, msg):
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match=msg):
        _call([_job(w, g, m1, m2, **job)])
    _untouched(w, w0, m1)


def test_rank_zero():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="rank"):
        _call([_job(w, g, m1, m2)], rank=0)


def test_moments_of_the_wrong_geometry():
    # a 64×48 column block of a wide 64×200 matrix: moments are r × 48 (the whole matrix's side)
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="moments"):
        _call([_job(w, g, m1, m2, global_shape=(64, 200))])
    _untouched(w, w0, m1)


def test_one_bad_job_stops_them_all():
    good, bad = _args(), _args()
    w0 = good[0].clone()
    with pytest.raises(ValueError, match="not a shard"):
        _call([_job(*good), _job(*bad, offset=7)])
    _untouched(good[0], w0, good[2])


def test_a_failing_all_reduce_stops_the_step():
    def broken(kind, buf):
        raise RuntimeError("peer went away")

    # d cut (a column block of a tall 64×60 matrix): R is summed before anything is written
    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="peer went away"):
        _call([_job(w, g, m1, m2, global_shape=(64, 60))], all_reduce=broken)
    _untouched(w, w0, m1)


def test_an_all_reduce_that_resizes_the_buffer():
    def shrink(kind, buf):
        del buf[:4]

    w, g, m1, m2 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="changed the buffer's length"):
        _call([_job(w, g, m1, m2, global_shape=(64, 60))], all_reduce=shrink)
    _untouched(w, w0, m1)


def test_the_same_weight_in_two_jobs():
    w, g, m1, m2 = _args()
    _, g2, m3, m4 = _args()
    w0 = w.clone()
    with pytest.raises(ValueError, match="share memory"):
        _call([_job(w, g, m1, m2), _job(w, g2, m3, m4)])
    _untouched(w, w0, m1)


def test_two_dtypes_in_one_call():
    a, (w, g, m1, m2) = _args(), _args()
    with pytest.raises(ValueError, match="share a dtype"):
        _call([_job(*a), _job(w.bfloat16(), g.bfloat16(), m1, m2)])


def test_a_malformed_job():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match=r"jobs\[0\]"):
        _call([(w, g, m1, m2, "rows")])


def test_non_contiguous_blocks_are_refused():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="contiguous"):
        _call([_job(w.t(), g.t(), m1, m2)])


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


def test_optimizer_refuses_shards_when_fused():
    p = torch.nn.Parameter(torch.randn(32, 48))
    opt = Apollo([p], rank=8, fused=True)
    with pytest.raises(ValueError, match="fused"):
        opt.shard(p, axis="rows", offset=0, global_shape=(64, 48))
