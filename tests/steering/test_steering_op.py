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


def test_cuda_impl_falls_back_to_torch_where_the_kernel_cannot_run(monkeypatch):
    # No driver / NVRTC / kernel on this device: the CUDA registration computes the same sums in
    # plain torch (CPU tensors stand in for the device ones; the fallback is device-agnostic).
    from plasticity import cuda

    calls = []
    monkeypatch.setattr(cuda, "kernels_ready", lambda dev: calls.append(dev) or "no driver here")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    r, t, s = _case()
    want = r.clone()
    want[: s.numel()] += t[s.long()]
    torch_op._cuda(r, t, s)
    assert calls == [0]
    assert torch.equal(r, want)


# ---- on a GPU: the kernel itself, through the torch op (scripts/gpu_check.sh runs these) ----
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_case(tokens, hidden, slots, dtype, idx, seed=0):
    r, t, s = _case(tokens=tokens + 2, hidden=hidden, slots=slots, dtype=dtype, idx=idx, seed=seed)
    return r.cuda(), t.cuda(), s.cuda()


@needs_cuda
def test_cuda_kernel_is_loaded_not_the_fallback():
    from plasticity import cuda

    assert cuda.kernels_ready(torch.cuda.current_device()) is None, cuda.status()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("idx", [torch.int32, torch.int64])
@pytest.mark.parametrize("hidden", [4096, 1000, 7])  # 16-byte rows (vectorised), 8-byte f16 rows, odd rows
def test_cuda_op_is_exact_against_residual_plus_table_row(dtype, idx, hidden):
    r, t, s = _cuda_case(300, hidden, 9, dtype, idx)
    want = r.clone()
    want[: s.numel()] += t[s.long()]  # torch: one rounding of the f32 sum per element, like the kernel
    before_pad = r[s.numel():].clone()
    torch_op.steer_add_(r, t, s)
    torch.cuda.synchronize()
    assert torch.equal(r, want)
    assert torch.equal(r[s.numel():], before_pad), "padding tokens were written"


@needs_cuda
def test_cuda_op_on_a_misaligned_slice():
    # A row slice that starts 2 bytes into the storage: the scalar kernel variant.
    big = torch.randn(65, 64, device="cuda", dtype=torch.bfloat16)
    r = big.view(-1)[1:1 + 64 * 64].view(64, 64)
    t = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    t[0] = 0
    s = torch.randint(0, 4, (64,), device="cuda", dtype=torch.int32)
    assert r.data_ptr() % 16 == 2
    want = r.clone() + t[s.long()]
    torch_op.steer_add_(r, t, s)
    torch.cuda.synchronize()
    assert torch.equal(r, want)


@needs_cuda
def test_cuda_op_replays_in_a_captured_graph_reading_the_buffers_each_time():
    # vLLM's decode path: fixed addresses captured once, rewritten in place before every replay.
    tokens, hidden = 256, 4096
    table = torch.zeros(8, hidden, device="cuda", dtype=torch.bfloat16)
    slots = torch.zeros(tokens, dtype=torch.int32, device="cuda")
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    res = torch.empty_like(x)

    def step():
        res.copy_(x)
        torch.ops.plasticity.steer_add_(res, table, slots[:200])

    torch_op.register()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture (loads nothing new: the kernel is loaded at first use)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    for trial in range(3):
        g2 = torch.Generator(device="cuda").manual_seed(trial)
        table.copy_(torch.randn(8, hidden, device="cuda", generator=g2).bfloat16())
        table[0] = 0
        slots.copy_(torch.randint(0, 8, (tokens,), device="cuda", generator=g2, dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        want = x.clone()
        want[:200] += table[slots[:200].long()]
        assert torch.equal(res, want), f"replay {trial}"
