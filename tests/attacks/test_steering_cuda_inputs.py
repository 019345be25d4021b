"""Hostile inputs at the steering op's CUDA path: each must raise before any launch.

Most use fake CUDA tensors (tests/cuda_support.py: a DLPack capsule that says "cuda:N" with no
memory behind it), so they run on machines without a GPU; every one is refused by a check that
runs before an address is used. The last group needs a real GPU and skips without one.
"""

import pytest
import torch

from plasticity import _plasticity as rs
from cuda_support import (BASE, FakeCudaTensor, fake_steering_args, needs_cuda, needs_no_driver,
                          needs_two_gpus)


def _refused(exc, match, *args, **kw):
    with pytest.raises(exc, match=match):
        rs.steering_add_(*args, **kw)


# ---- devices ----
def test_cuda_residual_with_cpu_table():
    r, _, s = fake_steering_args()
    _refused(ValueError, "must be on one device: residual is on cuda:0, table on cpu, slots on cuda:0",
             r, torch.zeros(3, 8), s, stream=0)


def test_cpu_residual_with_cuda_slots():
    r = torch.randn(6, 8)
    before = r.clone()
    _, t, s = fake_steering_args()
    _refused(ValueError, "must be on one device: residual is on cpu, table on cuda:0, slots on cuda:0", r, t, s)
    assert torch.equal(r, before), "the residual was written"


def test_cuda_tensors_on_two_devices():
    r, t, _ = fake_steering_args()
    s = FakeCudaTensor((4,), torch.int32, device_id=1, addr=BASE + (3 << 20))
    _refused(ValueError, "slots on cuda:1", r, t, s, stream=0)


# ---- the stream argument ----
def test_cuda_tensors_without_stream():
    _refused(ValueError, "CUDA tensors need the stream", *fake_steering_args())


@pytest.mark.parametrize("bad", [1.5, "0", b"\x00", object(), [0]])
def test_stream_not_an_int(bad):
    _refused(TypeError, "stream: expected an int", *fake_steering_args(), stream=bad)


def test_stream_is_a_bool():
    # bool is an int subclass in Python; True is not a stream handle.
    _refused(TypeError, "stream: expected an int.*got bool", *fake_steering_args(), stream=True)


@pytest.mark.parametrize("bad", [-1, 2**64, -(2**70)])
def test_stream_out_of_pointer_range(bad):
    _refused(ValueError, "is not a CUDA stream handle", *fake_steering_args(), stream=bad)


def test_stream_given_for_cpu_tensors():
    r = torch.randn(6, 8)
    t = torch.zeros(3, 8)
    before = r.clone()
    _refused(ValueError, "stream: given for CPU tensors", r, t, torch.tensor([1, 2], dtype=torch.int32), stream=0)
    assert torch.equal(r, before), "the residual was written"


# ---- the tensor checks hold on the device too ----
def test_cuda_table_dtype_differs():
    r, _, s = fake_steering_args()
    t = FakeCudaTensor((3, 8), torch.bfloat16, addr=BASE + (1 << 20))
    _refused(TypeError, "table: expected dtype float32, got bfloat16", r, t, s, stream=0)


def test_cuda_float_slots():
    r, t, _ = fake_steering_args()
    s = FakeCudaTensor((4,), torch.float32, addr=BASE + (2 << 20))
    _refused(TypeError, "slots: unsupported dtype.*int32 or int64", r, t, s, stream=0)


def test_cuda_non_contiguous_residual():
    _, t, s = fake_steering_args()
    r = FakeCudaTensor((6, 8), strides=(1, 6))  # a transposed view
    _refused(ValueError, "residual: tensor is not contiguous", r, t, s, stream=0)


def test_cuda_hidden_mismatch():
    r, _, s = fake_steering_args()
    _refused(ValueError, r"table: expected 2-D \[slots, 8\]", r, FakeCudaTensor((3, 9), addr=BASE + (1 << 20)), s,
             stream=0)


def test_cuda_more_slots_than_tokens():
    r, t, _ = fake_steering_args()
    _refused(ValueError, "slots: 7 indices for 6 tokens", r, t,
             FakeCudaTensor((7,), torch.int32, addr=BASE + (2 << 20)), stream=0)


def test_cuda_empty_table():
    r, _, s = fake_steering_args()
    _refused(ValueError, "table: needs at least the zero row", r, FakeCudaTensor((0, 8), addr=BASE + (1 << 20)), s,
             stream=0)


def test_cuda_table_aliases_residual():
    r, _, s = fake_steering_args()
    _refused(ValueError, "share memory", r, FakeCudaTensor((3, 8), addr=BASE + 32), s, stream=0)


def test_cuda_slots_alias_residual():
    r, t, _ = fake_steering_args()
    _refused(ValueError, "residual and slots share memory", r, t, FakeCudaTensor((4,), torch.int32, addr=BASE + 64),
             stream=0)


@needs_no_driver
def test_cuda_tensors_without_a_driver_say_what_is_missing():
    # Every check passes; the launch is refused because this machine cannot run the kernel.
    _refused(RuntimeError, "CUDA kernels cannot run on this machine: CUDA driver library", *fake_steering_args(),
             stream=0)


# ---- on a GPU ----
@needs_cuda
def test_out_of_range_slot_on_cuda_leaves_its_token_untouched():
    # The CPU path refuses the slot; the kernel cannot raise without a host sync, so it reads
    # nothing outside the table and leaves that token (only) as it was.
    r = torch.randn(4, 64, device="cuda")
    t = torch.randn(3, 64, device="cuda")
    s = torch.tensor([1, 3, -1, 2], dtype=torch.int32, device="cuda")
    want = r.clone()
    want[0] += t[1]
    want[3] += t[2]
    rs.steering_add_(r, t, s, stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert torch.equal(r, want)


@needs_two_gpus
def test_stream_of_another_device():
    r = torch.randn(4, 64, device="cuda:0")
    t = torch.zeros(3, 64, device="cuda:0")
    s = torch.tensor([1, 1], dtype=torch.int32, device="cuda:0")
    before = r.clone()
    other = torch.cuda.Stream(device="cuda:1")
    _refused(ValueError, "belongs to another device", r, t, s, stream=other.cuda_stream)
    assert torch.equal(r, before)


@needs_two_gpus
def test_tensor_on_a_device_that_is_not_current():
    # torch refuses to export it (its own check); the binding reports it, nothing runs.
    with torch.cuda.device(0):
        r = torch.randn(4, 64, device="cuda:1")
        t = torch.zeros(3, 64, device="cuda:1")
        s = torch.tensor([1], dtype=torch.int32, device="cuda:1")
        _refused(ValueError, "residual: cannot be borrowed zero-copy", r, t, s,
                 stream=torch.cuda.current_stream(1).cuda_stream)
