"""Hostile tensors at the Rust boundary: each must raise, none may write."""

import pytest
import torch

from plasticity import _plasticity as rs


def _args(m=64, n=48, r=8, dtype=torch.float32):
    w = torch.randn(m, n).to(dtype)
    g = torch.randn(m, n).to(dtype)
    shape = (m, r) if m >= n else (r, n)
    return w, g, torch.zeros(shape), torch.zeros(shape)


KW = dict(step=0, seed=1, prev_norm=None, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0,
          correct_bias=True, rank=8, scale_type="channel", alpha=None, update_proj_gap=200,
          norm_growth_limit=1.01, stochastic_rounding=False)
WS = rs.Workspace(1)


def _step(w, g, m1, m2, **over):
    kw = dict(KW, workspace=WS)
    kw.update(over)
    return rs.apollo_step(w, g, m1, m2, **kw)


def _assert_untouched(before, w):
    assert torch.equal(before, w), "the weight was written"


def test_not_a_tensor():
    w, g, m1, m2 = _args()
    with pytest.raises(TypeError, match="grad: expected a torch.Tensor"):
        _step(w, [[1.0]], m1, m2)


def test_integer_dtype():
    w, g, m1, m2 = _args()
    with pytest.raises(TypeError, match="unsupported dtype"):
        _step(w.to(torch.int32), g, m1, m2)


def test_grad_dtype_differs_from_weight():
    w, g, m1, m2 = _args()
    before = w.clone()
    with pytest.raises(TypeError, match="grad: expected dtype float32, got bfloat16"):
        _step(w, g.bfloat16(), m1, m2)
    _assert_untouched(before, w)


def test_non_contiguous_weight_is_refused_not_copied():
    w, g, m1, m2 = _args(m=48, n=64)
    wt = w.t()  # 64×48 view, not contiguous
    before = w.clone()
    with pytest.raises(ValueError, match="not contiguous"):
        _step(wt, g.t().contiguous(), torch.zeros(64, 8), torch.zeros(64, 8))
    _assert_untouched(before, w)


def test_sliced_storage_offset_is_honoured():
    # A contiguous row-slice has a storage offset: the step must write there only.
    big = torch.randn(80, 48)
    before = big.clone()
    w = big[16:80]
    g = torch.randn(64, 48)
    ok, *_ = _step(w, g, torch.zeros(64, 8), torch.zeros(64, 8))
    assert ok
    assert torch.equal(big[:16], before[:16]), "rows outside the view were written"
    assert not torch.equal(big[16:], before[16:])


def test_wrong_moment_shape():
    w, g, _, _ = _args()
    before = w.clone()
    with pytest.raises(ValueError, match=r"exp_avg: expected shape \[64, 8\]"):
        _step(w, g, torch.zeros(8, 64), torch.zeros(8, 64))
    _assert_untouched(before, w)


def test_moments_in_half_precision():
    w, g, m1, m2 = _args()
    with pytest.raises(TypeError, match="exp_avg: expected dtype float32"):
        _step(w, g, m1.bfloat16(), m2)


def test_weight_aliases_gradient():
    w, _, m1, m2 = _args()
    before = w.clone()
    with pytest.raises(ValueError, match="share memory"):
        _step(w, w, m1, m2)
    _assert_untouched(before, w)


def test_moments_alias_each_other():
    w, g, m1, _ = _args()
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq share memory"):
        _step(w, g, m1, m1)


def test_partial_overlap_through_views():
    base = torch.zeros(2 * 64 * 8 - 8)
    m1 = base[: 64 * 8].view(64, 8)
    m2 = base[64 * 8 - 8:].view(64, 8)  # overlaps m1's last row
    w, g, _, _ = _args()
    with pytest.raises(ValueError, match="share memory"):
        _step(w, g, m1, m2)


def test_one_dimensional_weight():
    with pytest.raises(ValueError, match="needs a 2-D matrix"):
        _step(torch.randn(10), torch.randn(10), torch.zeros(10, 8), torch.zeros(10, 8))


def test_empty_weight():
    with pytest.raises(ValueError, match="empty"):
        _step(torch.randn(0, 4), torch.randn(0, 4), torch.zeros(0, 8), torch.zeros(0, 8))


def test_unknown_scale_type():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="scale_type"):
        _step(w, g, m1, m2, scale_type="row")


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(lr=-1.0), dict(beta1=1.0), dict(rank=0),
                                 dict(update_proj_gap=0), dict(alpha=float("inf")), dict(norm_growth_limit=0.5)])
def test_invalid_hyper_parameters(bad):
    w, g, m1, m2 = _args()
    before = w.clone()
    with pytest.raises(ValueError):
        _step(w, g, m1, m2, **bad)
    _assert_untouched(before, w)


def test_wrong_projection_shape():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match=r"projection: expected shape \[8, 48\]"):
        _step(w, g, m1, m2, projection=torch.zeros(48, 8))


def test_requires_grad_parameter_is_accepted_zero_copy():
    p = torch.nn.Parameter(torch.randn(64, 48))
    ptr = p.data_ptr()
    ok, *_ = _step(p, torch.randn(64, 48), torch.zeros(64, 8), torch.zeros(64, 8))
    assert ok and p.data_ptr() == ptr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_is_refused_by_the_cpu_path():
    w, g, m1, m2 = (t.cuda() for t in _args())
    with pytest.raises(ValueError, match="cuda"):
        _step(w, g, m1, m2)


def test_meta_device_tensor():
    w = torch.empty(64, 48, device="meta")
    _, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="weight: cannot be borrowed zero-copy"):
        _step(w, g, m1, m2)


def test_nan_gradient_is_not_an_error_but_a_skip():
    w, g, m1, m2 = _args()
    g[0, 0] = float("nan")
    before = w.clone()
    ok, step, prev, _, _ = _step(w, g, m1, m2)
    assert (ok, step, prev) == (False, 0, None)
    _assert_untouched(before, w)
    assert not m1.any() and not m2.any()
