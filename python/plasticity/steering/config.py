"""The ``[steering]`` section of ``plasticity.toml`` (path in ``PLASTICITY_CONFIG``).

```toml
[steering]
admin = false            # admin routes (/v1/steering/*) off unless true
vectors_dir = "vectors"  # loaded at startup; file registrations must stay inside it
max_abs_scale = 1000.0   # |scale| above this is refused (400)
max_vector_norm = 1e6    # a direction with a larger L2 norm is refused at registration (400)
slots = 32               # distinct steering configs per forward batch (incl. the zero slot)
[steering.default]       # optional server-wide default, overridden per request
vector = "calm"          # or "a,b"
scale = 4.0              # or "4,-2"
layers = "2,3"           # optional
```
Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ENV = "PLASTICITY_CONFIG"


@dataclass
class SteeringConfig:
    admin: bool = False
    vectors_dir: Path | None = None
    max_abs_scale: float = 1000.0
    max_vector_norm: float = 1e6
    slots: int = 32
    default: dict = field(default_factory=dict)
    source: Path | None = None


def load(path: str | os.PathLike | None = None) -> SteeringConfig:
    path = path or os.environ.get(ENV)
    if not path:
        return SteeringConfig()
    p = Path(path).expanduser().resolve()
    with open(p, "rb") as f:
        doc = tomllib.load(f)
    sec = doc.get("steering", {})
    if not isinstance(sec, dict):
        raise ValueError(f"{p}: [steering] must be a table")
    known = {"admin", "vectors_dir", "max_abs_scale", "max_vector_norm", "slots", "default"}
    extra = set(sec) - known
    if extra:
        raise ValueError(f"{p}: unknown [steering] keys {sorted(extra)}")
    vd = sec.get("vectors_dir")
    cfg = SteeringConfig(
        admin=bool(sec.get("admin", False)),
        vectors_dir=(p.parent / vd).resolve() if vd else None,
        max_abs_scale=float(sec.get("max_abs_scale", 1000.0)),
        max_vector_norm=float(sec.get("max_vector_norm", 1e6)),
        slots=int(sec.get("slots", 32)),
        default=dict(sec.get("default", {})),
        source=p,
    )
    if not (0 < cfg.max_abs_scale < float("inf")):
        raise ValueError(f"{p}: steering.max_abs_scale must be positive and finite")
    if not (0 < cfg.max_vector_norm < float("inf")):
        raise ValueError(f"{p}: steering.max_vector_norm must be positive and finite")
    if not 2 <= cfg.slots <= 4096:
        raise ValueError(f"{p}: steering.slots must be in 2..4096")
    return cfg
