"""``torch.ops.plasticity.steer_add_``: the Rust addition as an opaque torch op.

Registered as a real torch.library op (mutating ``residual``, with a fake
impl) so Dynamo/Inductor keep it as one call in the compiled graph and it runs
on every forward, reading whatever the runner wrote into the persistent table
and slot buffers just before. A Python hook with branches would be traced once
and frozen (docs/design/vllm-hooks.md §4).
"""

from __future__ import annotations

import torch

_LIB: torch.library.Library | None = None


def _cpu(residual: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> None:
    from plasticity import _plasticity as rs

    rs.steering_add_(residual, table, slots)


def _generic(residual: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> None:
    # Where the CUDA kernel cannot run (no driver or NVRTC in this process, or it failed to
    # load; plasticity.cuda logs why once): the same sums in plain torch ops.
    n = slots.shape[0]
    residual[:n] += table[slots.long()]


def _cuda(residual: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> None:
    # kernels/steering_add.cu on torch's current stream: no sync and no allocation, so it is
    # captured into CUDA graphs like any torch kernel. Whether the kernel is ready is decided
    # once per device (plasticity.cuda.kernels_ready) and is a dict look-up afterwards.
    from plasticity import _plasticity as rs
    from plasticity import cuda

    dev = residual.device.index if residual.device.index is not None else torch.cuda.current_device()
    if cuda.kernels_ready(dev) is not None:
        _generic(residual, table, slots)
        return
    rs.steering_add_(residual, table, slots, stream=torch.cuda.current_stream(residual.device).cuda_stream)


def register() -> None:
    """Define the op once per process (idempotent)."""
    global _LIB
    if _LIB is not None or hasattr(torch.ops.plasticity, "steer_add_"):
        return
    lib = torch.library.Library("plasticity", "FRAGMENT")
    lib.define("steer_add_(Tensor(a!) residual, Tensor table, Tensor slots) -> ()")
    lib.impl("steer_add_", _cpu, "CPU")
    lib.impl("steer_add_", _cuda, "CUDA")
    lib._register_fake("steer_add_", lambda residual, table, slots: None)
    _LIB = lib


def steer_add_(residual: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> None:
    register()
    torch.ops.plasticity.steer_add_(residual, table, slots)
