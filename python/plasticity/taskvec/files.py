"""safetensors files for task vectors and merged models, one tensor at a time.

The file handling is Rust (``plasticity_core::safetensors_file``, on the
``safetensors`` crate, the format's reference implementation); this module is
its Python face: torch dtypes and tensors in, :class:`TaskVectorError` out.

- :func:`read_header` validates a header in full (size, the 100 MB limit on
  its length, UTF-8, JSON, a key given twice, dtypes, shapes, byte counts,
  offsets in range, contiguous and non-overlapping, no trailing bytes,
  ``__metadata__`` str → str), so a hostile or truncated file gives a clear
  :class:`TaskVectorError` naming the file, the tensor and the rule.
- :class:`SafetensorsFile` reads one: the header validated as above and then
  by the safetensors crate too; ``get`` reads one tensor's bytes with ``pread``
  straight into a new tensor (GIL released), ``get_mapped`` goes through
  ``safetensors.safe_open(..., framework="pt")`` (memory-mapped).
- :class:`SafetensorsWriter` streams a file: the header is fixed up front from
  the names, dtypes and shapes, then the tensors are written one by one into a
  temporary file beside the target, which is fsync'd and renamed over the
  target (and the directory fsync'd) only when every tensor is in. A crash or
  an error mid-write leaves any previous file at that path untouched, and the
  temporary file is removed on error. An operating-system failure (disk full)
  is raised as the ``OSError`` it is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .. import _plasticity as _P

# safetensors' own limit on the JSON header (MAX_HEADER_SIZE in the Rust crate).
MAX_HEADER_BYTES = _P.ST_MAX_HEADER_BYTES

# Bytes per element of every whole-byte dtype the validation knows (the safetensors crate's list).
DTYPE_SIZES = {name: bits // 8 for name, bits in _P.st_dtypes() if bits % 8 == 0}
TORCH_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")


class TaskVectorError(ValueError):
    """Bad task-vector input (file, tensor or option); raised before anything is written."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int  # byte offsets in the data section
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return ST_TO_TORCH.get(self.dtype)


def _call(fn, *args):
    """Run a binding; its ValueError (a refused file or a misuse) becomes a TaskVectorError
    with the same message. OSError (the disk, not the file) passes as it is."""
    try:
        return fn(*args)
    except ValueError as e:
        raise TaskVectorError(str(e)) from None


def _header(meta, tensors) -> tuple[dict[str, str], list[TensorInfo]]:
    return dict(meta), [TensorInfo(n, dt, tuple(shape), b, e) for n, dt, shape, b, e in tensors]


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], list[TensorInfo]]:
    """Validate a safetensors header: (metadata, tensors in data-offset order)."""
    return _header(*_call(_P.st_read_header, Path(path)))


class SafetensorsFile:
    """A validated safetensors file; ``get(name)`` reads one tensor into fresh memory.

    The header is validated as by :func:`read_header` and then by the
    safetensors crate's own check. ``get`` reads the tensor's bytes with
    ``pread`` into a new tensor, so memory holds exactly the tensors the caller
    keeps: a memory-mapped tensor (``get_mapped``, through safe_open) would stay
    resident as mapped file pages until the file is closed, and writing into it
    (a private mapping) would keep copy-on-write pages for as long — both grow
    with the model during a streaming merge.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = None  # safe_open's handle, opened by the first get_mapped
        self._r = None
        self._r = _call(_P.SafetensorsFileReader, self.path)
        self.metadata, infos = _header(*self._r.header())
        self.tensors: dict[str, TensorInfo] = {i.name: i for i in infos}

    @property
    def names(self) -> list[str]:
        """Tensor names in data-offset (file) order."""
        return list(self.tensors)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise TaskVectorError(f"{self.path}: no tensor {name!r}")
        return self.tensors[name]

    def get(self, name: str) -> torch.Tensor:
        """A new, writable CPU tensor with the data of ``name``."""
        i = self._info(name)
        dt = i.torch_dtype
        if dt is None:
            raise TaskVectorError(f"{self.path}: tensor {name!r} has dtype {i.dtype}, which cannot be read here")
        if self._r is None:
            raise TaskVectorError(f"{self.path}: file is closed")
        buf = torch.empty(i.end - i.start, dtype=torch.uint8)
        if buf.numel():
            _call(self._r.read_into, name, memoryview(buf.numpy()))
        return buf.view(dt).reshape(i.shape)

    def get_mapped(self, name: str) -> torch.Tensor:
        """Zero-copy tensor backed by safe_open's memory map (read it, do not write it)."""
        self._info(name)
        if self._r is None:
            raise TaskVectorError(f"{self.path}: file is closed")
        if self._f is None:
            from safetensors import safe_open

            try:
                self._f = safe_open(str(self.path), framework="pt")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise TaskVectorError(f"{self.path}: safetensors refused the file: {e}") from None
        try:
            return self._f.get_tensor(name)
        except Exception as e:
            raise TaskVectorError(f"{self.path}: cannot read tensor {name!r}: {e}") from None

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is not None and hasattr(f, "__exit__"):
            try:
                f.__exit__(None, None, None)
            except Exception:
                pass
        r, self._r = getattr(self, "_r", None), None
        if r is not None:
            r.close()

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, atomically.

    ``specs`` lists ``(name, dtype, shape)`` in the order the tensors will be
    written (dtype a ``torch.dtype`` or a safetensors name such as ``"F32"``).
    Use as a context manager: leaving the block normally commits (fsync,
    rename over ``path``, fsync of the directory), leaving it with an exception
    removes the temporary file and leaves ``path`` as it was::

        with SafetensorsWriter(out, [(n, t.dtype, t.shape) for n, t in ...], {"format": "pt"}) as w:
            for n, t in ...:
                w.write(n, t)
    """

    def __init__(self, path: str | os.PathLike, specs: Iterable[tuple[str, object, Sequence[int]]],
                 metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        # Python's side of the arguments (torch dtypes, any sequence of ints), checked in the
        # order the core checks the rest; the core checks names again.
        order: list[tuple[str, str, list[int]]] = []
        seen: set[str] = set()
        for name, dtype, shape in specs:
            if not isinstance(name, str) or not name or name == "__metadata__":
                raise TaskVectorError(f"bad tensor name {name!r}")
            if name in seen:
                raise TaskVectorError(f"tensor {name!r} listed twice")
            seen.add(name)
            st = TORCH_TO_ST.get(dtype) if isinstance(dtype, torch.dtype) else dtype
            if st not in ST_TO_TORCH:
                raise TaskVectorError(f"tensor {name!r}: cannot write dtype {dtype}")
            dims = [int(d) for d in shape]
            if any(d < 0 for d in dims):
                raise TaskVectorError(f"tensor {name!r}: shape {dims} has a negative dimension")
            order.append((name, st, dims))
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TaskVectorError("metadata must map strings to strings")
        self._w = None
        self._w = _call(_P.SafetensorsFileWriter, self.path, order, list(meta.items()))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; it must be the next name in ``specs`` with that dtype and shape."""
        st = TORCH_TO_ST.get(tensor.dtype)
        got = f"{tensor.dtype} {list(tensor.shape)}"
        data = None
        if st is not None:
            t = tensor.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous().reshape(-1)
            data = memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""
        _call(self._w.write, name, st, list(tensor.shape), data, got)

    def commit(self) -> None:
        _call(self._w.commit)

    def abort(self) -> None:
        if self._w is not None:
            self._w.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def save_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
              metadata: Mapping[str, str] | None = None) -> None:
    """Write a dict of tensors atomically through :class:`SafetensorsWriter`."""
    with SafetensorsWriter(path, [(n, t.dtype, t.shape) for n, t in tensors.items()], metadata) as w:
        for n, t in tensors.items():
            w.write(n, t)
