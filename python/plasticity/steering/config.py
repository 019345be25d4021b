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
Relative paths are resolved against the config file's folder. Values must have the TOML type
shown (``admin = "false"`` is refused, see ``plasticity.config``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import config

ENV = config.ENV


@dataclass
class SteeringConfig:
    admin: bool = False
    vectors_dir: Path | None = None
    max_abs_scale: float = 1000.0
    max_vector_norm: float = 1e6
    slots: int = 32
    default: dict = field(default_factory=dict)
    source: Path | None = None


_DEFAULTS = dict(admin=False, vectors_dir=None, max_abs_scale=1000.0, max_vector_norm=1e6, slots=32, default={})


def load(path: str | os.PathLike | None = None) -> SteeringConfig:
    got = config.read(path)
    if got is None:
        return SteeringConfig()
    doc, p = got
    v = {**_DEFAULTS, **config.section(doc, "steering", p, _DEFAULTS)}
    if not isinstance(v["default"], dict):
        raise ValueError(f"{p}: [steering.default] must be a table")
    if "enabled" in v["default"]:
        config.flag(v["default"]["enabled"], "steering.default.enabled", p)
    cfg = SteeringConfig(
        admin=config.flag(v["admin"], "steering.admin", p),
        vectors_dir=config.path_in(p.parent, v["vectors_dir"], "steering.vectors_dir", p),
        max_abs_scale=config.number(v["max_abs_scale"], "steering.max_abs_scale", p),
        max_vector_norm=config.number(v["max_vector_norm"], "steering.max_vector_norm", p),
        slots=config.integer(v["slots"], "steering.slots", p),
        default=dict(v["default"]),
        source=p,
    )
    if not (0 < cfg.max_abs_scale < float("inf")):
        raise ValueError(f"{p}: steering.max_abs_scale must be positive and finite")
    if not (0 < cfg.max_vector_norm < float("inf")):
        raise ValueError(f"{p}: steering.max_vector_norm must be positive and finite")
    if not 2 <= cfg.slots <= 4096:
        raise ValueError(f"{p}: steering.slots must be in 2..4096")
    return cfg
