"""Every value the memory store accepts, checked before it reaches SQL: texts, tags, keys, weights,
times, file bytes, and a Markdown note's front matter. Each failure is a MemoryStoreError that
names what and where."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .records import MemoryStoreError

DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_IMPORT_BYTES = 64 << 20
DEFAULT_IMPORTANCE = 0.5
DEFAULT_LINK_TYPE = "related"
MARKDOWN_LINK_TYPE = "mentions"
MAX_TAGS = 32
MAX_KEY_CHARS = 200
MAX_WEIGHT = 1e6
MAX_WALK = 64
WALK_EPS = 0.05  # added to importance so a note of importance 0 can still be reached

TAG_RE = re.compile(r"[\w.:/+\-]{1,64}")
LINK_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,31}")
SOURCE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,63}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
WIKI_RE = re.compile(r"\[\[([^\[\]|#\n]+)(?:#[^\[\]|\n]*)?(?:\|[^\[\]\n]*)?\]\]")
QUEUE_STATES = ("queued", "journaled", "trained")
CYCLE_STATES = ("running", "done", "failed")
NOTE_ORDERS = {
    "id": "n.id ASC", "-id": "n.id DESC",
    "created": "n.created_at ASC, n.id ASC", "-created": "n.created_at DESC, n.id DESC",
    "updated": "n.updated_at ASC, n.id ASC", "-updated": "n.updated_at DESC, n.id DESC",
    "importance": "n.importance ASC, n.id ASC", "-importance": "n.importance DESC, n.id ASC",
}
JSONL_FIELDS = {"text", "tags", "importance", "id", "links", "created_at", "source"}
JSONL_LINK_FIELDS = {"to", "type", "weight"}


def _err(prefix: str, msg: str) -> MemoryStoreError:
    return MemoryStoreError(f"{prefix}: {msg}" if prefix else msg)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_text(text, max_chars: int, what: str = "text", where: str = "") -> str:
    if not isinstance(text, str):
        raise _err(where, f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _err(where, f"{what} is empty")
    if len(text) > max_chars:
        raise _err(where, f"{what} has {len(text)} characters, more than the maximum of {max_chars}")
    if "\x00" in text:
        raise _err(where, f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _err(where, f"{what} is not valid Unicode (lone surrogate at position {e.start})") from None
    return text


def _check_tags(tags, where: str = "") -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise _err(where, f"tags must be a list of strings, got {type(tags).__name__}")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str):
            raise _err(where, f"tag must be a string, got {type(t).__name__}")
        if not TAG_RE.fullmatch(t):
            raise _err(where, f"invalid tag {t[:80]!r}: 1-64 letters, digits or . : / + - _")
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise _err(where, f"{len(out)} tags, more than the maximum of {MAX_TAGS}")
    return tuple(sorted(out))


def _check_importance(x, where: str = "") -> float:
    if x is None:
        return DEFAULT_IMPORTANCE
    if not _is_number(x):
        raise _err(where, f"importance must be a number in [0, 1], got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise _err(where, f"importance must be a number in [0, 1], got {x!r}")
    return x


def _check_weight(x, where: str = "") -> float:
    if x is None:
        return 1.0
    if not _is_number(x):
        raise _err(where, f"link weight must be a positive number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or not 0.0 < x <= MAX_WEIGHT:
        raise _err(where, f"link weight must be a number in (0, {MAX_WEIGHT:g}], got {x!r}")
    return x


def _check_link_type(t, where: str = "") -> str:
    if t is None:
        return DEFAULT_LINK_TYPE
    if not isinstance(t, str) or not LINK_TYPE_RE.fullmatch(t):
        raise _err(where, f"invalid link type {t!r}: a letter then up to 31 letters, digits, _ or -")
    return t


def _check_key(k, where: str = "") -> str | None:
    if k is None:
        return None
    if _is_number(k) and isinstance(k, int):
        k = str(k)
    if not isinstance(k, str):
        raise _err(where, f"note key must be a string or an integer, got {type(k).__name__}")
    if not k or k != k.strip() or len(k) > MAX_KEY_CHARS or CONTROL_RE.search(k) or "\n" in k or "\r" in k \
            or "\t" in k:
        raise _err(where, f"invalid note key {k[:80]!r}: 1-{MAX_KEY_CHARS} characters, no control "
                          "characters or surrounding spaces")
    try:
        k.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(where, "note key is not valid Unicode") from None
    return k


def _check_source(s, where: str = "") -> str:
    if not isinstance(s, str) or not SOURCE_RE.fullmatch(s):
        raise _err(where, f"invalid source {s!r}")
    return s


def _check_id(x, what: str = "note id") -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x <= 0:
        raise MemoryStoreError(f"{what} must be a positive integer, got {x!r}")
    return x


def _check_time(x, where: str = "") -> float | None:
    if x is None:
        return None
    if _is_number(x):
        v = float(x)
    elif isinstance(x, str):
        try:
            v = datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise _err(where, f"created_at {x[:80]!r} is not an ISO 8601 time") from None
    else:
        raise _err(where, f"created_at must be an ISO 8601 string or unix seconds, got {type(x).__name__}")
    if not math.isfinite(v) or v < 0:
        raise _err(where, f"created_at {x!r} is out of range")
    return v


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _read_bytes(path, limit: int) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise MemoryStoreError(f"{p}: {size} bytes, more than the import limit of {limit}")
        return p.read_bytes()
    except MemoryStoreError:
        raise
    except IsADirectoryError:
        raise MemoryStoreError(f"{p}: is a directory") from None
    except OSError as e:
        raise MemoryStoreError(f"{p}: cannot read: {e.strerror or e}") from None


def _decode(raw: bytes, where: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MemoryStoreError(f"{where}: not valid UTF-8 (byte {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _weighted_choice(rng, items: Sequence, weights: Sequence[float]):
    total = math.fsum(weights)
    r = rng.random() * total
    acc = 0.0
    for item, w in zip(items, weights):
        acc += w
        if r < acc:
            return item
    return items[-1]


def _parse_front_matter(text: str, where: str) -> tuple[dict, str]:
    """``---``-fenced ``key: value`` lines at the top; ``tags`` may be ``[a, b]``,
    ``a, b`` or a following ``- a`` list. Unknown keys are ignored."""
    if not (text.startswith("---\n") or text == "---"):
        return {}, text
    lines = text.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip() == "---"), None)
    if end is None:
        raise MemoryStoreError(f"{where}: front matter opened with '---' is never closed")
    meta: dict[str, Any] = {}
    current_list: list | None = None
    for n, line in enumerate(lines[1:end], start=2):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("- ") and current_list is not None:
            current_list.append(s[2:].strip().strip("'\""))
            continue
        m = re.fullmatch(r"([A-Za-z_][\w-]*)\s*:\s*(.*)", s)
        if not m:
            raise MemoryStoreError(f"{where}: front matter line {n}: expected 'key: value', got {s[:80]!r}")
        k, v = m.group(1).lower(), m.group(2).strip()
        current_list = None
        if k == "tags":
            if not v:
                current_list = meta["tags"] = []
            else:
                v = v[1:-1] if v.startswith("[") and v.endswith("]") else v
                meta["tags"] = [t.strip().strip("'\"") for t in v.split(",") if t.strip()]
        elif k == "importance":
            try:
                meta["importance"] = float(v.strip("'\""))
            except ValueError:
                raise MemoryStoreError(f"{where}: front matter line {n}: importance {v[:40]!r} "
                                       "is not a number") from None
    if "tags" in meta:
        meta["tags"] = [t[1:] if t.startswith("#") else t for t in meta["tags"]]
    return meta, "\n".join(lines[end + 1:])
