"""Helpers for the CUDA-path tests.

``FakeCudaTensor`` exports a DLPack capsule that says "CUDA device N" for memory that does not
exist, so the binding's checks on device tensors (one device, dtype, shape, contiguity, overlap,
the stream argument) can be exercised on a machine without a GPU. Every check runs before any
address is used; a call that passes them all would launch on the fake addresses, so such calls
are only made where no CUDA driver is present (``NO_DRIVER``), and there they must fail with the
"cannot run on this machine" error.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from plasticity import _plasticity as rs

NO_DRIVER = not rs.cuda_status()["driver"]
needs_no_driver = pytest.mark.skipif(not NO_DRIVER, reason="a CUDA driver is present: the fake device "
                                     "addresses would reach a kernel launch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs two CUDA devices")


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_NAME = b"dltensor"
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

# (DLPack type code, bits) of the dtypes the tests use.
_DTYPES = {torch.float32: (2, 32), torch.bfloat16: (4, 16), torch.float16: (2, 16),
           torch.int32: (0, 32), torch.int64: (0, 64)}
BASE = 0x7F00_0000_0000  # a made-up, 256-byte aligned device address


class FakeCudaTensor:
    """Looks like a torch CUDA tensor to the binding's DLPack borrow; has no memory."""

    def __init__(self, shape, dtype=torch.float32, device_id=0, addr=BASE, strides=None):
        self.shape, self.dtype, self.device_id, self.addr = tuple(shape), dtype, device_id, addr
        self.strides = strides
        self._keep = []  # the structs each capsule points at

    def detach(self):
        return self

    def __dlpack__(self, stream=None):
        code, bits = _DTYPES[self.dtype]
        n = len(self.shape)
        shape = (ctypes.c_int64 * max(n, 1))(*self.shape)
        strides = None
        if self.strides is not None:
            strides = (ctypes.c_int64 * max(n, 1))(*self.strides)
        m = _DLManagedTensor()
        m.dl_tensor.data = self.addr
        m.dl_tensor.device = _DLDevice(2, self.device_id)  # kDLCUDA
        m.dl_tensor.ndim = n
        m.dl_tensor.dtype = _DLDataType(code, bits, 1)
        m.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        m.dl_tensor.strides = (ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64)) if strides is not None
                               else ctypes.POINTER(ctypes.c_int64)())
        self._keep.append((m, shape, strides))
        return _capsule_new(ctypes.addressof(m), _NAME, None)


def fake_steering_args(tokens=6, hidden=8, slots=3, dtype=torch.float32, idx=torch.int32, device_id=0):
    """Residual, table and slots on the fake device, at disjoint addresses."""
    esz = torch.empty((), dtype=dtype).element_size()
    r = FakeCudaTensor((tokens, hidden), dtype, device_id, BASE)
    t = FakeCudaTensor((slots, hidden), dtype, device_id, BASE + (1 << 20))
    s = FakeCudaTensor((tokens - 2,), idx, device_id, BASE + (2 << 20))
    assert tokens * hidden * esz < 1 << 20
    return r, t, s
