"""One strict number grammar for every number a client sends (JSON bodies, steering flags).

A number is a JSON number (``bool`` is not one: ``true`` is refused, not read as 1) or, where a
string is allowed, ASCII digits in JSON's own grammar: no full-width or Arabic-Indic digits, no
``_`` separators, no surrounding blanks, no ``inf``/``nan``. Integers are written without a
fraction or exponent. So ``"1"`` and ``" 1"`` can never name the same layer.
"""

from __future__ import annotations

import math
import re

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_MAX_DIGITS = 400  # a longer numeral is an attack on the parser, not a number


class NumberError(ValueError):
    """A value that is not a number in the strict grammar (HTTP 400)."""


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def parse_float(value, what: str, *, strings: bool = False, lo: float | None = None,
                hi: float | None = None) -> float:
    """A finite float from a JSON number (or a strict numeral string when ``strings``), in [lo, hi]."""
    if isinstance(value, bool):
        raise NumberError(f"{what} must be a number, got a boolean")
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:
            raise NumberError(f"{what}: {_short(value)} is out of range") from None
    elif strings and isinstance(value, str):
        if value.lstrip("+-").lower() in ("nan", "inf", "infinity"):
            raise NumberError(f"{what}: {_short(value)} is NaN or Inf (not finite)")
        if len(value) > _MAX_DIGITS or not _FLOAT.fullmatch(value):
            raise NumberError(f"{what}: {_short(value)} is not a number (plain ASCII digits, e.g. -1.5e-3)")
        x = float(value)
    else:
        raise NumberError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(x):
        raise NumberError(f"{what}: {_short(value)} is NaN or Inf (not finite)")
    if lo is not None and x < lo or hi is not None and x > hi:
        raise NumberError(f"{what}: {_short(value)} is outside [{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}]")
    return x


def parse_int(value, what: str, *, strings: bool = False, lo: int | None = None, hi: int | None = None) -> int:
    """An integer from a JSON integer (or a strict ASCII numeral string when ``strings``), in [lo, hi]."""
    if isinstance(value, bool):
        raise NumberError(f"{what} must be an integer, got a boolean")
    if isinstance(value, int):
        x = value
    elif strings and isinstance(value, str):
        if len(value) > _MAX_DIGITS or not _INT.fullmatch(value):
            raise NumberError(f"{what}: {_short(value)} is not an integer (plain ASCII digits)")
        x = int(value)
    else:
        raise NumberError(f"{what} must be an integer, got {_short(value)}")
    if lo is not None and x < lo or hi is not None and x > hi:
        raise NumberError(f"{what}: {x} is outside [{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}]")
    return x
