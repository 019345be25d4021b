"""Whether plasticity's CUDA kernels can run in this process, and making them ready.

The Rust extension loads libcuda and NVRTC at run time, so the same wheel imports everywhere.
NVRTC (the run-time compiler of ``kernels/*.cu``) usually comes with torch's CUDA wheels, under
``site-packages/nvidia/cu13/lib`` (``nvidia-cuda-nvrtc``), which is not on the loader's path:
:func:`ensure_nvrtc` finds it there (or at ``$PLASTICITY_NVRTC_LIB``) and loads it once.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from plasticity import _plasticity as rs

log = logging.getLogger("vllm.plasticity.cuda")  # under vllm.* so vLLM's handlers print it

NVRTC_ENV = "PLASTICITY_NVRTC_LIB"
_NVRTC_NAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
_LOCK = threading.Lock()
_nvrtc_tried = False
_ready: dict[int, str | None] = {}  # CUDA ordinal -> None (kernels loaded) or why not


def nvrtc_candidates() -> list[Path]:
    """Where NVRTC may be: ``$PLASTICITY_NVRTC_LIB``, then the ``nvidia`` wheels' folders on sys.path."""
    out: list[Path] = []
    env = os.environ.get(NVRTC_ENV)
    if env:
        out.append(Path(env))
    try:
        import nvidia  # the namespace package of NVIDIA's pip wheels (torch's CUDA dependencies)

        roots = [Path(p) for p in getattr(nvidia, "__path__", [])]
    except ImportError:
        roots = []
    for root in roots:
        for sub in ("cu13/lib", "cuda_nvrtc/lib"):
            for name in _NVRTC_NAMES:
                p = root / sub / name
                if p.is_file():
                    out.append(p)
    return out


def ensure_nvrtc() -> bool:
    """Load NVRTC from the first candidate that works (once per process); whether NVRTC is usable."""
    global _nvrtc_tried
    with _LOCK:
        if not _nvrtc_tried:
            _nvrtc_tried = True
            for p in nvrtc_candidates():
                try:
                    if rs.cuda_preload_nvrtc(str(p)):
                        log.info("plasticity: NVRTC loaded from %s", p)
                        break
                except (ValueError, RuntimeError) as e:
                    log.warning("plasticity: cannot load NVRTC from %s: %s", p, e)
    return bool(rs.cuda_status()["nvrtc"])


def status() -> dict:
    """The Rust side's view: driver, nvrtc, devices, nvrtc_version, error (see ``cuda_status``)."""
    ensure_nvrtc()
    return dict(rs.cuda_status())


def kernels_ready(ordinal: int) -> str | None:
    """None when the kernels are compiled and loaded on ``cuda:ordinal``, else why they cannot be.

    Done once per device and remembered, so a later call (inside a CUDA-graph capture, on every
    forward) costs a dict look-up: no driver call, no module load.
    """
    why = _ready.get(ordinal, "")
    if why != "":
        return why
    ensure_nvrtc()
    st = rs.cuda_status()
    if st["error"] is not None:
        why = st["error"]
    else:
        try:
            rs.cuda_load_kernels(ordinal)
            why = None
        except (RuntimeError, ValueError) as e:
            why = str(e)
    if why is None:
        log.info("plasticity: CUDA kernels loaded on cuda:%d (NVRTC %s)", ordinal, st["nvrtc_version"])
    else:
        log.warning("plasticity: CUDA kernels unavailable on cuda:%d, plain torch instead: %s", ordinal, why)
    _ready[ordinal] = why
    return why
