"""Hostile inputs at the CUDA Apollo step (``_plasticity.CudaApollo``): each must raise before the
device is touched. Fake CUDA tensors (tests/cuda_support.py) stand in for device memory, so these
run without a GPU."""

import pytest
import torch

from plasticity import _plasticity as rs
from cuda_support import BASE, FakeCudaTensor, needs_no_driver

KW = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, correct_bias=True, rank=8,
          scale_type="channel", alpha=None, update_proj_gap=200, norm_growth_limit=1.01, stochastic_rounding=False)
MB = 1 << 20


def _args(m=64, n=48, dtype=torch.float32, device_id=0):
    shape = (m, 8) if m >= n else (8, n)
    return (FakeCudaTensor((m, n), dtype, device_id, BASE), FakeCudaTensor((m, n), dtype, device_id, BASE + MB),
            FakeCudaTensor(shape, torch.float32, device_id, BASE + 2 * MB),
            FakeCudaTensor(shape, torch.float32, device_id, BASE + 3 * MB))


def _step(args, stream=0, **over):
    h = rs.CudaApollo(64, 48, 8, "float32", 0, 7)
    return h.step(*args, stream=stream, **dict(KW, **over))


def test_matrix_too_small_for_the_rank():
    with pytest.raises(ValueError, match="smaller side must exceed the rank"):
        rs.CudaApollo(64, 8, 8, "float32", 0, 1)


def test_unknown_dtype_name():
    with pytest.raises(TypeError, match="dtype must be float32, bfloat16 or float16"):
        rs.CudaApollo(64, 48, 8, "int8", 0, 1)


def test_cpu_weight_for_a_cuda_state():
    _, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="weight: tensor is on cpu, this Apollo state is on cuda:0"):
        _step((torch.zeros(64, 48), g, m1, m2))


def test_tensors_on_another_cuda_device():
    w, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="grad: tensor is on cuda:1"):
        _step((w, FakeCudaTensor((64, 48), torch.float32, 1, BASE + MB), m1, m2))


def test_grad_dtype_differs():
    w, _, m1, m2 = _args()
    with pytest.raises(TypeError, match="grad: expected dtype float32, got bfloat16"):
        _step((w, FakeCudaTensor((64, 48), torch.bfloat16, 0, BASE + MB), m1, m2))


def test_weight_shape_is_not_the_states():
    _, g, m1, m2 = _args()
    with pytest.raises(ValueError, match=r"weight: expected shape \[64, 48\]"):
        _step((FakeCudaTensor((48, 64)), g, m1, m2))


def test_moments_in_half_precision_or_wrong_shape():
    w, g, _, m2 = _args()
    with pytest.raises(TypeError, match="exp_avg: expected dtype float32"):
        _step((w, g, FakeCudaTensor((64, 8), torch.bfloat16, 0, BASE + 2 * MB), m2))
    with pytest.raises(ValueError, match=r"exp_avg: expected shape \[64, 8\]"):
        _step((w, g, FakeCudaTensor((8, 48), torch.float32, 0, BASE + 2 * MB), m2))


def test_non_contiguous_weight():
    _, g, m1, m2 = _args()
    with pytest.raises(ValueError, match="weight: tensor is not contiguous"):
        _step((FakeCudaTensor((64, 48), strides=(1, 64)), g, m1, m2))


def test_weight_aliases_gradient():
    w, _, m1, m2 = _args()
    with pytest.raises(ValueError, match="share memory"):
        _step((w, FakeCudaTensor((64, 48), addr=BASE + 128), m1, m2))


@pytest.mark.parametrize("bad", [1.5, "0", None, True])
def test_stream_not_an_int(bad):
    with pytest.raises(TypeError, match="stream: expected an int"):
        _step(_args(), stream=bad)


def test_negative_stream():
    with pytest.raises(ValueError, match="not a CUDA stream handle"):
        _step(_args(), stream=-5)


def test_rank_differs_from_the_states():
    with pytest.raises(ValueError, match="rank 16, but this state was made for rank 8"):
        _step(_args(), rank=16)


def test_stochastic_rounding_on_cuda():
    with pytest.raises(ValueError, match="stochastic_rounding is not available on CUDA"):
        _step(_args(), stochastic_rounding=True)


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(beta1=1.0), dict(scale_type="row"),
                                 dict(update_proj_gap=0), dict(norm_growth_limit=0.5)])
def test_invalid_hyper_parameters(bad):
    with pytest.raises(ValueError):
        _step(_args(), **bad)


def test_loaded_state_with_a_non_finite_norm():
    h = rs.CudaApollo(64, 48, 8, "float32", 0, 7)
    with pytest.raises(ValueError, match="prev_norm must be finite"):
        h.set_state(3, float("nan"))


@needs_no_driver
def test_valid_step_without_a_driver_says_what_is_missing():
    with pytest.raises(RuntimeError, match="CUDA kernels cannot run on this machine: CUDA driver library"):
        _step(_args())
