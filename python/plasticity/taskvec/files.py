"""safetensors files for task vectors and merged models, one tensor at a time.

- :class:`SafetensorsWriter` streams a file: the header is fixed up front from
  the names, dtypes and shapes, then the tensors are written one by one into a
  temporary file beside the target, which is fsync'd and renamed over the
  target (and the directory fsync'd) only when every tensor is in. A crash or
  an error mid-write leaves any previous file at that path untouched, and the
  temporary file is removed on error.
- :class:`SafetensorsFile` reads one: it validates the header itself (size,
  UTF-8, JSON, duplicate keys, dtypes, shapes, offsets in range, contiguous and
  non-overlapping, ``__metadata__`` str → str), so a hostile or truncated file
  gives a clear :class:`TaskVectorError`, and then reads tensors through
  ``safetensors.safe_open(..., framework="pt")`` (memory-mapped: only the
  tensor asked for is brought in).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

# safetensors' own limit on the JSON header (MAX_HEADER_SIZE in the Rust crate).
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
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


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise TaskVectorError(f"duplicate key {k!r} in the header")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], list[TensorInfo]]:
    """Validate a safetensors header: (metadata, tensors in data-offset order)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TaskVectorError(f"{path}: truncated: {size} bytes is too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise TaskVectorError(f"{path}: header length {n} is absurd (limit {MAX_HEADER_BYTES} bytes)")
            if 8 + n > size:
                raise TaskVectorError(f"{path}: truncated: the header says {n} bytes but the file has {size - 8} after the length")
            raw = f.read(n)
    except OSError as e:
        raise TaskVectorError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskVectorError(f"{path}: header is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        hdr = json.loads(text, object_pairs_hook=_no_duplicates)
    except TaskVectorError as e:
        raise TaskVectorError(f"{path}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise TaskVectorError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(hdr, dict):
        raise TaskVectorError(f"{path}: header must be a JSON object, got {type(hdr).__name__}")
    meta = hdr.pop("__metadata__", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TaskVectorError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    infos: list[TensorInfo] = []
    for name, e in hdr.items():
        if not name:
            raise TaskVectorError(f"{path}: empty tensor name")
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise TaskVectorError(f"{path}: tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dt, str) or dt not in DTYPE_SIZES:
            raise TaskVectorError(f"{path}: tensor {name!r}: unknown dtype {dt!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise TaskVectorError(f"{path}: tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise TaskVectorError(f"{path}: tensor {name!r}: data_offsets must be [begin, end], got {offs!r}")
        b, t = offs
        if b < 0 or t < b:
            raise TaskVectorError(f"{path}: tensor {name!r}: bad data_offsets [{b}, {t}]")
        want = math.prod(shape) * DTYPE_SIZES[dt]
        if t - b != want:
            raise TaskVectorError(
                f"{path}: tensor {name!r}: data_offsets [{b}, {t}] hold {t - b} bytes but {dt}{shape} needs {want}")
        if t > data_len:
            raise TaskVectorError(
                f"{path}: tensor {name!r}: data_offsets [{b}, {t}] are out of range: the data section has "
                f"{data_len} bytes (truncated file?)")
        infos.append(TensorInfo(name, dt, tuple(shape), b, t))
    infos.sort(key=lambda i: (i.start, i.end))
    pos = 0
    prev = None
    for i in infos:
        if i.start < pos:
            raise TaskVectorError(f"{path}: tensors {prev.name!r} and {i.name!r} have overlapping data_offsets")
        if i.start > pos:
            raise TaskVectorError(f"{path}: {i.start - pos} bytes before tensor {i.name!r} belong to no tensor")
        pos, prev = i.end, i
    if pos != data_len:
        raise TaskVectorError(f"{path}: {data_len - pos} trailing bytes after the last tensor belong to no tensor")
    return meta, infos


class SafetensorsFile:
    """A validated safetensors file; ``get(name)`` reads one tensor into fresh memory.

    The header is validated by :func:`read_header` and then by
    ``safetensors.safe_open(..., framework="pt")`` too. ``get`` reads the
    tensor's bytes with ``pread`` into a new tensor, so memory holds exactly the
    tensors the caller keeps: a memory-mapped tensor (``get_mapped``, through
    safe_open) would stay resident as mapped file pages until the file is
    closed, and writing into it (a private mapping) would keep copy-on-write
    pages for as long — both grow with the model during a streaming merge.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metadata, infos = read_header(self.path)
        self.tensors: dict[str, TensorInfo] = {i.name: i for i in infos}
        from safetensors import safe_open

        try:
            self._f = safe_open(str(self.path), framework="pt")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise TaskVectorError(f"{self.path}: safetensors refused the file: {e}") from None
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        self._data_start = 8 + n
        self._fd = os.open(self.path, os.O_RDONLY)

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
        if self._fd is None:
            raise TaskVectorError(f"{self.path}: file is closed")
        size = i.end - i.start
        buf = torch.empty(size, dtype=torch.uint8)
        if size:
            mv = memoryview(buf.numpy())
            got = 0
            while got < size:
                k = os.preadv(self._fd, [mv[got:]], self._data_start + i.start + got)
                if k <= 0:
                    raise TaskVectorError(f"{self.path}: file ended inside tensor {name!r} (changed since it was opened?)")
                got += k
        return buf.view(dt).reshape(i.shape)

    def get_mapped(self, name: str) -> torch.Tensor:
        """Zero-copy tensor backed by safe_open's memory map (read it, do not write it)."""
        self._info(name)
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
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        entries: dict[str, dict] = {}
        self._order: list[tuple[str, str, tuple[int, ...]]] = []
        off = 0
        for name, dtype, shape in specs:
            if not isinstance(name, str) or not name or name == "__metadata__":
                raise TaskVectorError(f"bad tensor name {name!r}")
            if name in entries:
                raise TaskVectorError(f"tensor {name!r} listed twice")
            st = TORCH_TO_ST.get(dtype) if isinstance(dtype, torch.dtype) else dtype
            if st not in DTYPE_SIZES or st not in ST_TO_TORCH:
                raise TaskVectorError(f"tensor {name!r}: cannot write dtype {dtype}")
            shape = tuple(int(d) for d in shape)
            nbytes = math.prod(shape) * DTYPE_SIZES[st]
            entries[name] = {"dtype": st, "shape": list(shape), "data_offsets": [off, off + nbytes]}
            self._order.append((name, st, shape))
            off += nbytes
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TaskVectorError("metadata must map strings to strings")
        hdr = ({"__metadata__": meta} if meta else {}) | entries
        raw = json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * ((-len(raw)) % 8)  # safetensors pads the header to 8 bytes
        self._data_len = off
        self._next = 0
        self._done = False
        parent = self.path.parent
        if not parent.is_dir():
            raise TaskVectorError(f"{self.path}: directory {parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb")
        try:
            self._f.write(struct.pack("<Q", len(raw)) + raw)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; it must be the next name in ``specs`` with that dtype and shape."""
        if self._done:
            raise TaskVectorError(f"{self.path}: writer is closed")
        if self._next >= len(self._order):
            raise TaskVectorError(f"{self.path}: every declared tensor is already written (got {name!r})")
        want, st, shape = self._order[self._next]
        if name != want:
            raise TaskVectorError(f"{self.path}: expected tensor {want!r} next, got {name!r}")
        if TORCH_TO_ST.get(tensor.dtype) != st or tuple(tensor.shape) != shape:
            raise TaskVectorError(
                f"{self.path}: tensor {name!r} declared {st}{list(shape)}, got {tensor.dtype} {list(tensor.shape)}")
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.numel():
            self._f.write(memoryview(t.view(torch.uint8).numpy()))
        self._next += 1

    def commit(self) -> None:
        if self._done:
            return
        if self._next != len(self._order):
            missing = [n for n, _, _ in self._order[self._next:]]
            self.abort()
            raise TaskVectorError(f"{self.path}: {len(missing)} declared tensors were not written (first {missing[0]!r})")
        try:
            self._f.flush()
            # mkstemp makes the file 0600; give it the mode a plain open() would.
            os.fchmod(self._f.fileno(), 0o666 & ~_umask())
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._f.close()
        except Exception:
            pass
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

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
