"""The Rust steering op (`steering_add_` / torch.ops.plasticity.steer_add_) against plain torch."""

import pytest
import torch

from plasticity import _plasticity as rs
from plasticity.steering import torch_op


def _case(tokens=7, hidden=16, slots=4, dtype=torch.float32, idx=torch.int32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(tokens, hidden, generator=g).to(dtype)
    t = torch.randn(slots, hidden, generator=g).to(dtype)
    t[0] = 0
    s = torch.randint(0, slots, (tokens - 2,), generator=g).to(idx)
    return r, t, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("idx", [torch.int32, torch.int64])
def test_matches_torch(dtype, idx):
    r, t, s = _case(dtype=dtype, idx=idx)
    want = r.float().clone()
    want[: s.numel()] += t.float()[s.long()]
    rs.steering_add_(r, t, s)
    # one rounding of the f32 sum
    assert torch.equal(r, want.to(dtype))


def test_padding_tokens_untouched():
    r, t, s = _case(tokens=10)
    before = r.clone()
    rs.steering_add_(r, t, s[:3])
    assert torch.equal(r[3:], before[3:])


def test_all_zero_slots_is_noop_even_with_garbage_row0():
    r, t, _ = _case()
    t[0] = float("nan")
    before = r.clone()
    rs.steering_add_(r, t, torch.zeros(r.shape[0], dtype=torch.int32))
    assert torch.equal(r, before)


def test_torch_op_in_compiled_graph_reads_buffers_each_call():
    # The compile-safe pattern: the graph is traced once with all-zero slots,
    # later calls must still see the rewritten buffers (no frozen branch).
    torch_op.register()
    table = torch.zeros(3, 8)
    slots = torch.zeros(16, dtype=torch.int32)

    def f(x):
        y = x * 1.0
        torch.ops.plasticity.steer_add_(y, table, slots[: y.shape[0]])
        return y + 0

    cf = torch.compile(f, fullgraph=True)
    x = torch.ones(5, 8)
    assert torch.equal(cf(x), x)
    table[2] = 3.0
    slots[1] = 2
    out = cf(x)
    assert torch.equal(out[1], torch.full((8,), 4.0)) and torch.equal(out[0], x[0])
