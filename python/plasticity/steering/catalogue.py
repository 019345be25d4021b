"""The API server's view of the registered vectors, used to validate requests
before they reach the engine. The worker holds the actual tables; every change
goes through ``collective_rpc`` first and lands here only if all workers accepted it."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plasticity.numbers import NumberError, parse_float, parse_int
from plasticity.steering.files import directions_from_tensors, load_vector_file
from plasticity.steering.spec import RESERVED_NAMES, SteerSpec, SteeringError, parse_xargs, valid_name

# The largest finite value of each model dtype: a steered residual must stay below it.
_DTYPE_MAX = {"float32": 3.4028234663852886e38, "bfloat16": 3.3895313892515355e38, "float16": 65504.0}

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it


@dataclass
class Entry:
    name: str
    layers: list[int]
    norms: dict[int, float]
    source: str
    max_abs: float = 0.0  # largest |element| over all layers (overflow check of scale × vector)
    generation: int = 0  # which registration of this name (a replaced vector must not reuse K/V)

    def to_json(self) -> dict:
        return {"name": self.name, "layers": self.layers, "norm": {str(k): v for k, v in self.norms.items()},
                "max_norm": max(self.norms.values()), "source": self.source}


class Catalogue:
    def __init__(self, engine_client, cfg, info: dict):
        self.engine = engine_client
        self.cfg = cfg
        self.hidden = int(info["hidden_size"])
        self.num_layers = int(info["num_layers"])
        self.dtype_max = _DTYPE_MAX.get(str(info.get("dtype", "float32")), _DTYPE_MAX["float16"])
        self.entries: dict[str, Entry] = {}
        self._registrations = 0
        self.default: SteerSpec | None = None
        self.lock = asyncio.Lock()  # admin changes are serialised

    # ---- validation (hot path: pure Python, no engine access) ----
    def validate(self, spec: SteerSpec) -> SteerSpec:
        missing = [n for n in spec.names if n not in self.entries]
        if missing:
            known = sorted(self.entries) or "none registered"
            raise SteeringError(f"unknown steering vector(s) {missing}; known: {known}")
        if spec.layers is not None:
            bad = [l for l in spec.layers if not 0 <= l < self.num_layers]
            if bad:
                raise SteeringError(f"steer_layers {bad} out of range 0..{self.num_layers - 1}")
            covered = set().union(*(self.entries[n].layers for n in spec.names))
            unused = [l for l in spec.layers if l not in covered]
            if unused:
                raise SteeringError(f"steer_layers {unused}: none of {list(spec.names)} has a direction there")
        # Σ|scale|·max|v| bounds every element of the added row: it must not overflow the model dtype.
        peak = sum(abs(s) * self.entries[n].max_abs for n, s in zip(spec.names, spec.scales))
        if not peak < self.dtype_max:
            raise SteeringError(f"steering {list(spec.names)} at scales {list(spec.scales)} would overflow the "
                                f"model's dtype (largest added value {peak:.3g})")
        return spec

    def resolve(self, xargs) -> SteerSpec | None | bool:
        """The effective steering for a request: its flag, else the server default."""
        spec = parse_xargs(xargs, max_abs_scale=self.cfg.max_abs_scale)
        if spec is None:
            return self.default  # may be None: no steering
        if spec is False:
            return False
        return self.validate(spec)

    def spec_from_default(self, d: dict) -> SteerSpec | None:
        if d and not isinstance(d.get("enabled", True), bool):  # "false" must not read as on
            raise SteeringError("default steering: 'enabled' must be true or false")
        if not d or d.get("enabled", True) is False or not d.get("vector"):
            return None
        x = {"steer": d["vector"], "steer_scale": d.get("scale", 1.0)}
        if d.get("layers") is not None:
            x["steer_layers"] = d["layers"]
        spec = parse_xargs(x, max_abs_scale=self.cfg.max_abs_scale)
        if not isinstance(spec, SteerSpec):
            raise SteeringError("default steering: 'vector' must name at least one vector")
        return self.validate(spec)

    # ---- changes (admin) ----
    def safe_path(self, path: str) -> Path:
        """Resolve a user-given vector file path; it must stay inside vectors_dir (after symlinks)."""
        if self.cfg.vectors_dir is None:
            raise SteeringError("no vectors_dir configured: loading vectors from files is disabled")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise SteeringError("'path' must be a non-empty string")
        root = Path(os.path.realpath(self.cfg.vectors_dir))
        p = Path(os.path.realpath(root / path))  # absolute `path` replaces root, then is checked
        if p != root and root not in p.parents:
            raise SteeringError(f"path {path!r} is outside the configured vectors folder")
        if not p.is_file():
            raise SteeringError(f"path {path!r}: no such file in the vectors folder")
        return p

    def check_directions(self, name: str, dirs: dict[int, np.ndarray]) -> Entry:
        """Everything about a vector that can be refused, checked before any worker sees it;
        returns its catalogue entry (norms in float64, all finite)."""
        if not valid_name(name):
            raise SteeringError(f"invalid vector name {str(name)[:70]!r} (letters, digits, _ . - ; at most 64; "
                                f"not {sorted(RESERVED_NAMES)})")
        norms, max_abs = {}, 0.0
        for l, v in dirs.items():
            if v.shape != (self.hidden,):
                raise SteeringError(f"vector {name!r}: direction.{l} has size {v.size}, the model's hidden size is {self.hidden}")
            if not 0 <= l < self.num_layers:
                raise SteeringError(f"vector {name!r}: layer {l} out of range 0..{self.num_layers - 1}")
            v64 = np.asarray(v, dtype=np.float64)
            norms[l] = float(np.linalg.norm(v64))
            max_abs = max(max_abs, float(np.abs(v64).max(initial=0.0)))
            if not np.isfinite(norms[l]) or norms[l] > self.cfg.max_vector_norm:
                raise SteeringError(f"vector {name!r}: direction.{l} has norm {norms[l]:.3g}, above the limit "
                                    f"max_vector_norm = {self.cfg.max_vector_norm:g}")
        if not max_abs < self.dtype_max:
            raise SteeringError(f"vector {name!r}: values up to {max_abs:.3g} overflow the model's dtype")
        return Entry(name, sorted(dirs), norms, "", max_abs)

    async def add(self, name: str, dirs: dict[int, np.ndarray], source: str, replace: bool = False) -> Entry:
        e = self.check_directions(name, dirs)
        e.source = source
        if name in self.entries and not replace:
            raise SteeringError(f"vector {name!r} already exists (pass \"replace\": true to overwrite)")
        layers = e.layers
        data = np.stack([dirs[l] for l in layers]).astype(np.float32).tobytes()
        results = await self.engine.collective_rpc("plasticity_register_vector", args=(name, layers, data, replace))
        errors = [r.get("error") for r in results if not r.get("ok")]
        if errors:
            # A worker refused: undo on the ones that accepted so all agree.
            if name not in self.entries:
                await self.engine.collective_rpc("plasticity_delete_vector", args=(name,))
            raise SteeringError(errors[0])
        self._registrations += 1
        e.generation = self._registrations
        self.entries[name] = e
        return e

    def generations(self, names) -> tuple:
        """Which registration of each vector a request uses (part of its prefix-cache salt)."""
        return tuple(self.entries[n].generation for n in names if n in self.entries)

    async def remove(self, name: str) -> None:
        if name not in self.entries:
            raise KeyError(name)
        if self.default is not None and name in self.default.names:
            raise SteeringError(f"vector {name!r} is part of the server default; change the default first")
        await self.engine.collective_rpc("plasticity_delete_vector", args=(name,))
        del self.entries[name]

    async def load_folder(self) -> list[str]:
        """Register every vector file of ``vectors_dir``. A file that cannot be used (corrupt, a link
        leading out of the folder, a bad name or shape) is skipped with an error in the log naming
        it, so one bad file cannot stop the server; returns those error lines."""
        d = self.cfg.vectors_dir
        if d is None:
            return []
        if not d.is_dir():
            raise SteeringError(f"vectors_dir {d} is not a folder")
        skipped = []
        for p in sorted(d.iterdir()):
            if p.suffix.lower() not in (".gguf", ".safetensors"):
                continue
            try:
                dirs, _ = await asyncio.to_thread(load_vector_file, self.safe_path(p.name))
                e = await self.add(p.stem, dirs, f"file:{p.name}")
            except (SteeringError, OSError) as ex:
                skipped.append(f"{p.name}: {ex}")
                log.error("plasticity: steering vector file %s skipped: %s", p, ex)
                continue
            log.info("plasticity: loaded steering vector %s (layers %s) from %s", e.name, e.layers, p)
        self.skipped = skipped
        return skipped


def directions_from_values(values) -> dict[int, np.ndarray]:
    """Inline ``{"<layer>": [floats...]}`` from a JSON body."""
    if not isinstance(values, dict) or not values:
        raise SteeringError("'values' must be an object {\"<layer>\": [floats...]}")
    tensors = {}
    for k, v in values.items():
        try:  # one strict grammar: "1" and " 1" must not both name layer 1
            layer = parse_int(k, "values key (a layer number)", strings=True, lo=0, hi=9999)
            if not isinstance(v, list):
                raise NumberError(f"values[{k[:20]!r}] must be a flat list of numbers")
            for x in v:
                parse_float(x, f"values[{k[:20]!r}]")
        except NumberError as e:
            raise SteeringError(str(e)) from None
        tensors[f"direction.{layer}"] = np.asarray(v, dtype=np.float64)
    # JSON floats beyond f32 range become inf here and are refused below.
    with np.errstate(over="ignore"):
        tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    return directions_from_tensors(tensors, "values")
