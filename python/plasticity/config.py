"""``plasticity.toml``: finding and reading the file, and the strict value types every section uses.

Each path (steering, training, snapshots, dream) owns its section and its bounds; this module owns
what they share: where the file is (``$PLASTICITY_CONFIG``), relative paths against its folder, and
typed reads. TOML already has types, so a value of the wrong one is refused rather than converted:
``enabled = "false"`` is a string, and ``bool("false")`` would have turned training on.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

ENV = "PLASTICITY_CONFIG"


def read(path: str | os.PathLike | None = None) -> tuple[dict, Path] | None:
    """The config file (``path`` or ``$PLASTICITY_CONFIG``) parsed, with its resolved path; None if
    neither names one."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    p = Path(path).expanduser().resolve()
    with open(p, "rb") as f:
        return tomllib.load(f), p


def section(doc: dict, name: str, where, known) -> dict:
    """The table ``[name]`` of ``doc`` ({} if absent); refuses a non-table and unknown keys."""
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise ValueError(f"{where}: [{name}] must be a table")
    extra = set(sec) - set(known)
    if extra:
        raise ValueError(f"{where}: unknown [{name}] keys {sorted(extra)}")
    return sec


def _shown(v) -> str:
    return repr(v)[:60]


def flag(v, key: str, where) -> bool:
    """A TOML boolean; a string such as "false" is refused, never read as true."""
    if not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {_shown(v)}")
    return v


def integer(v, key: str, where) -> int:
    """A TOML integer; 2.7 (or 2.0) is refused rather than truncated."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}: {key} must be an integer, got {_shown(v)}")
    return v


def number(v, key: str, where) -> float:
    """A finite TOML integer or float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where}: {key} must be a finite number, got {_shown(v)}")
    return float(v)


def text(v, key: str, where) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: {key} must be a string, got {_shown(v)}")
    return v


def path_in(base: Path | None, v, key: str, where) -> Path | None:
    """A path (``~`` expanded) resolved against the config file's folder; "" or absent = None."""
    if v is None or v == "":
        return None
    p = Path(text(v, key, where)).expanduser()
    return (base / p).resolve() if (base is not None and not p.is_absolute()) else p.resolve()
