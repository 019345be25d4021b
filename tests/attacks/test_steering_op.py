"""Hostile tensors at the steering op boundary: each must raise, none may write."""

import pytest
import torch

from plasticity import _plasticity as rs


def _ok():
    r = torch.randn(6, 8)
    t = torch.randn(3, 8)
    t[0] = 0
    s = torch.tensor([0, 1, 2, 1], dtype=torch.int32)
    return r, t, s


def _refused(exc, match, r, t, s):
    before = r.clone()
    with pytest.raises(exc, match=match):
        rs.steering_add_(r, t, s)
    assert torch.equal(before, r), "the residual was written"


def test_slot_out_of_range():
    r, t, s = _ok()
    s[3] = 3
    _refused(ValueError, "slot index 3 at token 3 is outside the table", r, t, s)


def test_negative_slot():
    r, t, s = _ok()
    s[2] = -1
    _refused(ValueError, "slot index -1", r, t, s)


def test_float_slots():
    r, t, _ = _ok()
    _refused(TypeError, "slots: unsupported dtype.*int32 or int64", r, t, torch.zeros(4))


def test_integer_residual():
    _, t, s = _ok()
    with pytest.raises(TypeError, match="residual: unsupported dtype"):
        rs.steering_add_(torch.zeros(6, 8, dtype=torch.int32), t, s)


def test_table_dtype_differs():
    r, t, s = _ok()
    _refused(TypeError, "table: expected dtype float32, got bfloat16", r, t.bfloat16(), s)


def test_hidden_mismatch():
    r, _, s = _ok()
    _refused(ValueError, r"table: expected 2-D \[slots, 8\]", r, torch.zeros(3, 9), s)


def test_more_slots_than_tokens():
    r, t, _ = _ok()
    _refused(ValueError, "slots: 7 indices for 6 tokens", r, t, torch.zeros(7, dtype=torch.int32))


def test_residual_not_2d():
    _, t, s = _ok()
    with pytest.raises(ValueError, match="residual: expected 2-D"):
        rs.steering_add_(torch.zeros(48), t, s)


def test_slots_not_1d():
    r, t, _ = _ok()
    _refused(ValueError, "slots: expected 1-D", r, t, torch.zeros(2, 2, dtype=torch.int32))


def test_non_contiguous_residual():
    r = torch.randn(8, 6)
    t = torch.zeros(3, 8)
    before = r.clone()
    with pytest.raises(ValueError, match="not contiguous"):
        rs.steering_add_(r.t(), t, torch.zeros(2, dtype=torch.int32))
    assert torch.equal(before, r)


def test_table_aliases_residual():
    r, _, s = _ok()
    _refused(ValueError, "share memory", r, r[:3], s)


def test_slots_alias_residual():
    r = torch.zeros(6, 8)
    s = r.view(torch.int32)[0, :4]
    with pytest.raises(ValueError, match="share memory"):
        rs.steering_add_(r, torch.zeros(3, 8), s)


def test_empty_table():
    r, _, s = _ok()
    _refused(ValueError, "table", r, torch.zeros(0, 8), s)


def test_not_a_tensor():
    _, t, s = _ok()
    with pytest.raises(TypeError, match="residual: expected a torch.Tensor"):
        rs.steering_add_([[1.0]], t, s)


def test_requires_grad_is_borrowed_not_refused_for_table():
    # Parameters (requires_grad) are detached for the borrow; the op still works.
    r, t, s = _ok()
    rs.steering_add_(r, torch.nn.Parameter(t), s)
