"""The per-request steering flag, parsed the same way in the API server and the worker.

Requests carry flat keys in ``vllm_xargs`` (vLLM forbids nested dicts there):

- ``steer``: ``"name"`` or ``"name1,name2"`` (or a list of names);
  ``"none"``/``""`` switches steering off, overriding the server default.
- ``steer_scale``: a number, ``"1.5,-2"``, or a list: one per vector, or one for all.
- ``steer_layers``: optional ``"2,3"``/int/list: only these layers of the vectors.

The API server validates against the catalogue and rewrites the flag into the
canonical strings (``SteerSpec.to_xargs``) before the engine sees it, adds a
prefix-cache salt, and signs the canonical form (``steer_sig``, an HMAC with a
key only the worker and the API server know). The worker steers a request only
when that signature checks out, so a flag that reached the engine by any other
route (one the middleware does not rewrite) can never steer a forward, and
steered K/V is always salted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from plasticity.numbers import NumberError, parse_float, parse_int

KEYS = ("steer", "steer_scale", "steer_layers")
SIG_KEY = "steer_sig"  # written by the API server only; a client that sends it is refused
OFF = ("", "none", "off")
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}", re.ASCII)  # always with fullmatch
# Words the flag reads as "no steering", and path-like names: never a vector's name.
RESERVED_NAMES = frozenset({"none", "off", ".", ".."})
DEFAULT_MAX_ABS_SCALE = 1000.0


def valid_name(name) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and name.lower() not in RESERVED_NAMES


def _signed_text(xargs: dict) -> bytes:
    return "\0".join(f"{k}={xargs.get(k, '')}" for k in KEYS).encode()


def sign(key: bytes, xargs: dict) -> str:
    """The signature of the canonical steering strings in ``xargs`` (see module docstring)."""
    return hmac.new(key, _signed_text(xargs), hashlib.sha256).hexdigest()[:32]


def verify(key: bytes | None, xargs: dict) -> bool:
    sig = xargs.get(SIG_KEY)
    return bool(key) and isinstance(sig, str) and hmac.compare_digest(sig, sign(key, xargs))


class SteeringError(ValueError):
    """A steering request or vector that must be refused (HTTP 400)."""


@dataclass(frozen=True)
class SteerSpec:
    """One request's steering: vectors with their scales, optionally restricted to layers."""

    names: tuple[str, ...]
    scales: tuple[float, ...]
    layers: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple:
        return (self.names, self.scales, self.layers)

    def to_xargs(self) -> dict[str, str]:
        out = {"steer": ",".join(self.names), "steer_scale": ",".join(repr(s) for s in self.scales)}
        if self.layers is not None:
            out["steer_layers"] = ",".join(str(l) for l in self.layers)
        return out

    def cache_salt(self) -> str:
        # Steered KV must never be reused by a request with another (or no)
        # steering config: the salt enters vLLM's prefix-cache block hash.
        return "plasticity-steer-" + hashlib.sha256(repr(self.key).encode()).hexdigest()[:24]


def _split(value, what: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        items = str(value).split(",") if isinstance(value, str) else [value]
    else:
        raise SteeringError(f"vllm_xargs.{what} must be a string, a number or a flat list, got {type(value).__name__}")
    out = []
    for it in items:
        if isinstance(it, bool) or not isinstance(it, (int, float, str)):
            raise SteeringError(f"vllm_xargs.{what}: items must be strings or numbers, got {type(it).__name__}")
        out.append(str(it).strip())
    return out


def parse_xargs(xargs, *, max_abs_scale: float = DEFAULT_MAX_ABS_SCALE, signed: bool = False
                ) -> SteerSpec | None | bool:
    """Parse the steering keys of ``vllm_xargs`` (``signed``: the worker's side, where the API
    server's ``steer_sig`` is expected beside them; a client may never send it).

    Returns ``None`` when no steering key is present (use the server default),
    ``False`` when steering is explicitly off, else a ``SteerSpec`` (not yet
    checked against the catalogue: see ``Catalogue.validate``).
    """
    if xargs is None:
        return None
    if not isinstance(xargs, dict):
        raise SteeringError(f"vllm_xargs must be an object, got {type(xargs).__name__}")
    allowed = KEYS + (SIG_KEY,) if signed else KEYS
    unknown = sorted(k for k in xargs if isinstance(k, str) and k.startswith("steer") and k not in allowed)
    if unknown:
        raise SteeringError(f"unknown steering key(s) {unknown}; expected {list(KEYS)}")
    if "steer" not in xargs:
        if "steer_scale" in xargs or "steer_layers" in xargs:
            raise SteeringError("vllm_xargs.steer_scale/steer_layers given without vllm_xargs.steer")
        return None
    raw = xargs["steer"]
    if isinstance(raw, str) and raw.strip().lower() in OFF:
        return False
    names = _split(raw, "steer")
    if not names:
        raise SteeringError("vllm_xargs.steer is empty")
    for n in names:
        if not valid_name(n):
            raise SteeringError(f"vllm_xargs.steer: invalid vector name {n[:70]!r} (letters, digits, _ . - ; "
                                f"at most 64; not {sorted(RESERVED_NAMES)})")
    if len(set(names)) != len(names):
        raise SteeringError("vllm_xargs.steer: a vector is named twice")
    scales_raw = _split(xargs.get("steer_scale", 1.0), "steer_scale")
    try:
        scales = [parse_float(s, "vllm_xargs.steer_scale", strings=True) for s in scales_raw]
    except NumberError as e:
        raise SteeringError(str(e)) from None
    if len(scales) == 1 and len(names) > 1:
        scales = scales * len(names)
    if len(scales) != len(names):
        raise SteeringError(f"vllm_xargs.steer_scale: {len(scales)} scales for {len(names)} vectors")
    for s in scales:
        if abs(s) > max_abs_scale:
            raise SteeringError(f"vllm_xargs.steer_scale: |{s}| exceeds the limit {max_abs_scale:g}")
    layers = None
    if "steer_layers" in xargs:
        lr = _split(xargs["steer_layers"], "steer_layers")
        try:
            layers = tuple(sorted({parse_int(l, "vllm_xargs.steer_layers", strings=True) for l in lr}))
        except NumberError as e:
            raise SteeringError(str(e)) from None
        if not layers:
            raise SteeringError("vllm_xargs.steer_layers is empty")
    return SteerSpec(tuple(names), tuple(scales), layers)
