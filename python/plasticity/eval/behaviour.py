"""Behaviour tests (JSONL files): their format, checks and runner. The generators that answer them
live in ``generators.py`` and held-out perplexity in ``perplexity.py``; this module re-exports both,
so ``plasticity.eval.behaviour`` stays the one import for all three.

A behaviour test file has one JSON object per line::

    {"prompt": "text" | [{"role": "user", "content": "..."}, ...],
     "expect": "regex" | null,      # must match the reply (re.search)
     "forbid": "regex" | null,      # must not match the reply
     "max_tokens": 32,              # optional, 1..4096 (default 32)
     "id": "name"}                  # optional, unique in the file (default "line-N")

At least one of ``expect`` / ``forbid`` is required. The reply is matched with
``re.search`` after stripping leading and trailing whitespace, so ``^`` anchors at
the reply's first non-blank character; use inline flags (``(?i)``, ``(?s)``,
``(?m)``) for case, dot-all or multi-line matching. Blank lines are ignored.
A file is validated whole before anything runs: any bad line raises
:class:`BehaviourFileError` naming the file and the line.

A text prompt is sent as is (``/v1/completions`` on a server, plain tokenisation
locally); a list of chat messages goes through the model's chat template with the
generation prompt (``/v1/chat/completions`` on a server). Decoding is greedy
(temperature 0) on both paths.

``generate_fn(prompt, max_tokens) -> str`` is injected into :func:`run_tests`:
:func:`server_generator` (an OpenAI-compatible server, e.g. ``plasticity serve``)
and :func:`local_generator` (transformers, greedy) build one.

Held-out perplexity (:func:`heldout_ppl_local`, :func:`heldout_ppl_server`): each
text is tokenised without special tokens and cut into consecutive windows of at
most ``seq`` tokens; in a window of n tokens the last n-1 are scored given the
tokens before them in that window; perplexity = exp(Σ NLL / Σ scored tokens).
Both paths use the same windows, so their numbers agree up to the numerics of
the two engines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import BehaviourFileError, EvalHTTPError
from .generators import DEFAULT_MAX_TOKENS, LocalGenerator, ServerGenerator, local_generator, server_generator
from .perplexity import heldout_ppl_local, heldout_ppl_server, read_texts, windows

__all__ = [
    "BehaviourFileError",
    "BehaviourTest",
    "EvalHTTPError",
    "DEFAULT_MAX_TOKENS",
    "parse_test",
    "parse_tests",
    "load_tests",
    "check_output",
    "run_tests",
    "server_generator",
    "local_generator",
    "ServerGenerator",
    "LocalGenerator",
    "read_texts",
    "windows",
    "heldout_ppl_local",
    "heldout_ppl_server",
    "behaviours_dir",
    "list_behaviours",
    "behaviour_files",
]

MAX_TOKENS_LIMIT = 4096
MAX_PATTERN_CHARS = 2000
MAX_FILE_BYTES = 16 << 20
ROLES = ("system", "user", "assistant")
FIELDS = ("prompt", "expect", "forbid", "max_tokens", "id")




@dataclass(frozen=True)
class BehaviourTest:
    """One validated behaviour test. ``expect``/``forbid`` are the pattern strings (compiled lazily)."""

    prompt: str | tuple
    expect: str | None
    forbid: str | None
    max_tokens: int = DEFAULT_MAX_TOKENS
    id: str = ""
    source: str = ""
    _expect_re: re.Pattern | None = field(default=None, repr=False, compare=False)
    _forbid_re: re.Pattern | None = field(default=None, repr=False, compare=False)

    @property
    def messages(self) -> list[dict] | None:
        """The prompt as a fresh list of chat messages, or ``None`` for a text prompt."""
        if isinstance(self.prompt, str):
            return None
        return [{"role": r, "content": c} for r, c in self.prompt]

    def prompt_value(self) -> str | list[dict]:
        """What a generator receives: the text, or a list of ``{"role", "content"}`` dicts."""
        return self.prompt if isinstance(self.prompt, str) else self.messages

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt_value(), "expect": self.expect, "forbid": self.forbid,
                "max_tokens": self.max_tokens}


# --------------------------------------------------------------------------- validation

def _compile(pattern, key: str, source, line) -> re.Pattern | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise BehaviourFileError(f"'{key}' must be a regex string or null, got {type(pattern).__name__}",
                                 source, line)
    if not pattern:
        raise BehaviourFileError(f"'{key}' is an empty regex (it matches everything); use null to leave it out",
                                 source, line)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise BehaviourFileError(f"'{key}' is longer than {MAX_PATTERN_CHARS} characters", source, line)
    try:
        return re.compile(pattern)
    except re.error as e:
        raise BehaviourFileError(f"'{key}' is not a valid regex ({e}): {pattern!r}", source, line) from None
    except (RecursionError, OverflowError) as e:
        raise BehaviourFileError(f"'{key}' is not a usable regex ({type(e).__name__}): {pattern[:80]!r}",
                                 source, line) from None


def _prompt(p, source, line) -> str | tuple:
    if isinstance(p, str):
        if not p.strip():
            raise BehaviourFileError("'prompt' is empty", source, line)
        return p
    if isinstance(p, list):
        if not p:
            raise BehaviourFileError("'prompt' is an empty list of chat messages", source, line)
        msgs = []
        for k, m in enumerate(p):
            if not isinstance(m, dict):
                raise BehaviourFileError(f"'prompt' message {k} must be an object with 'role' and 'content', "
                                         f"got {type(m).__name__}", source, line)
            extra = set(m) - {"role", "content"}
            if extra:
                raise BehaviourFileError(f"'prompt' message {k} has unknown fields {sorted(extra)}", source, line)
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or role not in ROLES:
                raise BehaviourFileError(f"'prompt' message {k}: 'role' must be one of {list(ROLES)}, got {role!r}",
                                         source, line)
            if not isinstance(content, str):
                raise BehaviourFileError(f"'prompt' message {k}: 'content' must be a string, "
                                         f"got {type(content).__name__}", source, line)
            msgs.append((role, content))
        if not any(c.strip() for _, c in msgs):
            raise BehaviourFileError("'prompt' messages are all empty", source, line)
        # Stored as (role, content) tuples so a BehaviourTest stays immutable; see BehaviourTest.messages.
        return tuple(msgs)
    raise BehaviourFileError(f"'prompt' must be a string or a list of chat messages, got {type(p).__name__}",
                             source, line)


def parse_test(obj, *, source: str | None = None, line: int | None = None,
               default_id: str | None = None) -> BehaviourTest:
    """Validate one test object (a dict as decoded from JSON) → :class:`BehaviourTest`."""
    if not isinstance(obj, dict):
        raise BehaviourFileError(f"a test must be a JSON object, got {type(obj).__name__}", source, line)
    unknown = set(obj) - set(FIELDS)
    if unknown:
        raise BehaviourFileError(f"unknown fields {sorted(unknown)} (allowed: {list(FIELDS)})", source, line)
    if "prompt" not in obj:
        raise BehaviourFileError("missing 'prompt'", source, line)
    prompt = _prompt(obj["prompt"], source, line)
    expect_re = _compile(obj.get("expect"), "expect", source, line)
    forbid_re = _compile(obj.get("forbid"), "forbid", source, line)
    if expect_re is None and forbid_re is None:
        raise BehaviourFileError("neither 'expect' nor 'forbid' is set: a test needs at least one", source, line)
    mt = obj.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(mt, bool) or not isinstance(mt, int):
        raise BehaviourFileError(f"'max_tokens' must be an integer, got {type(mt).__name__} {mt!r}", source, line)
    if not 1 <= mt <= MAX_TOKENS_LIMIT:
        raise BehaviourFileError(f"'max_tokens' must be in 1..{MAX_TOKENS_LIMIT}, got {mt}", source, line)
    tid = obj.get("id", default_id if default_id is not None else (f"line-{line}" if line else "test"))
    if not isinstance(tid, str) or not tid.strip():
        raise BehaviourFileError(f"'id' must be a non-empty string, got {tid!r}", source, line)
    return BehaviourTest(prompt=prompt, expect=obj.get("expect"), forbid=obj.get("forbid"), max_tokens=mt,
                         id=tid, source=f"{source}:{line}" if source and line else (source or ""),
                         _expect_re=expect_re, _forbid_re=forbid_re)


def parse_tests(data: str | bytes, source: str = "<string>") -> list[BehaviourTest]:
    """Validate a whole JSONL text; raises :class:`BehaviourFileError` on the first bad line."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_FILE_BYTES:
            raise BehaviourFileError(f"file is larger than {MAX_FILE_BYTES >> 20} MiB", source)
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = bytes(data)[: e.start].count(b"\n") + 1
            raise BehaviourFileError(f"not valid UTF-8 (byte {e.start})", source, line) from None
    elif not isinstance(data, str):
        raise BehaviourFileError(f"expected JSONL text, got {type(data).__name__}", source)
    elif data.startswith("\ufeff"):
        data = data[1:]
    tests: list[BehaviourTest] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(data.split("\n"), start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise BehaviourFileError(f"invalid JSON ({e.msg} at column {e.colno})", source, n) from None
        except RecursionError:
            raise BehaviourFileError("invalid JSON (nested too deeply)", source, n) from None
        t = parse_test(obj, source=source, line=n)
        if t.id in seen:
            raise BehaviourFileError(f"duplicate id {t.id!r} (first on line {seen[t.id]})", source, n)
        seen[t.id] = n
        tests.append(t)
    if not tests:
        raise BehaviourFileError("no tests in the file", source)
    return tests


def load_tests(path) -> list[BehaviourTest]:
    """Read and validate a behaviour test file (JSONL)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BehaviourFileError(f"file is larger than {MAX_FILE_BYTES >> 20} MiB", str(p))
        data = p.read_bytes()
    except OSError as e:
        raise BehaviourFileError(f"cannot read: {e.strerror or e}", str(p)) from None
    return parse_tests(data, source=str(p))


def _as_tests(tests) -> list[BehaviourTest]:
    if isinstance(tests, (str, Path)):
        return load_tests(tests)
    out = []
    for i, t in enumerate(tests):
        out.append(t if isinstance(t, BehaviourTest) else parse_test(t, source="<tests>", line=i + 1))
    return out


# --------------------------------------------------------------------------- running

def check_output(test: BehaviourTest, output: str) -> tuple[bool, str]:
    """(passed, reason) for one reply; the reply is stripped before matching."""
    text = (output or "").strip()
    exp = test._expect_re if test._expect_re is not None else (re.compile(test.expect) if test.expect else None)
    forb = test._forbid_re if test._forbid_re is not None else (re.compile(test.forbid) if test.forbid else None)
    if exp is not None and exp.search(text) is None:
        return False, "expected pattern not found"
    if forb is not None:
        m = forb.search(text)
        if m is not None:
            return False, f"forbidden pattern found: {m.group(0)[:60]!r}"
    return True, "ok"


def run_tests(generate_fn: Callable[[str | list, int], str], tests, *, on_error: str = "record",
              progress: bool | str = False) -> dict:
    """Run behaviour tests through ``generate_fn(prompt, max_tokens) -> str``.

    ``tests``: a path, or a list of :class:`BehaviourTest` / test dicts (validated first).
    ``on_error``: ``"record"`` (default) counts a generator exception as a failed test
    with an ``error`` entry, ``"raise"`` re-raises it.
    ``progress``: a progress bar on stderr (``True`` or a label).

    Returns ``{"pass_rate", "n", "passed", "failed", "errors", "results": [...]}``, each
    result ``{"id", "prompt", "output", "passed", "reason", "expect", "forbid",
    "max_tokens"}`` (+ ``"error"``). ``pass_rate`` is ``None`` for no tests.
    """
    if on_error not in ("record", "raise"):
        raise ValueError("on_error must be 'record' or 'raise'")
    tests = _as_tests(tests)
    results = []
    it: Iterable = tests
    if progress:
        from .report import progress as _progress

        it = _progress(tests, total=len(tests), desc=progress if isinstance(progress, str) else "behaviour tests")
    n_pass = n_err = 0
    for t in it:
        entry = {"id": t.id, "prompt": t.prompt_value(), "expect": t.expect, "forbid": t.forbid,
                 "max_tokens": t.max_tokens}
        try:
            out = generate_fn(t.prompt_value(), t.max_tokens)
            if not isinstance(out, str):
                raise TypeError(f"generate_fn returned {type(out).__name__}, not str")
        except Exception as e:  # noqa: BLE001 - recorded per test, or re-raised
            if on_error == "raise":
                raise
            n_err += 1
            entry.update(output=None, passed=False, reason="error", error=f"{type(e).__name__}: {e}")
            results.append(entry)
            continue
        ok, reason = check_output(t, out)
        n_pass += ok
        entry.update(output=out, passed=ok, reason=reason)
        results.append(entry)
    n = len(tests)
    return {"pass_rate": (n_pass / n) if n else None, "n": n, "passed": n_pass, "failed": n - n_pass,
            "errors": n_err, "results": results}


# --------------------------------------------------------------------------- shipped datasets

def behaviours_dir() -> Path:
    """The folder of the behaviour datasets shipped with the package."""
    return Path(__file__).resolve().parent / "data" / "behaviours"


def list_behaviours() -> list[str]:
    """Names of the shipped behaviours (folders with train/heldout/tests.jsonl)."""
    d = behaviours_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and (p / "tests.jsonl").is_file())


def behaviour_files(name: str) -> dict[str, Path]:
    """``{"train", "heldout", "tests"}`` paths of a shipped behaviour."""
    if name not in list_behaviours():
        raise KeyError(f"unknown behaviour {name!r}; shipped: {list_behaviours()}")
    d = behaviours_dir() / name
    return {k: d / f"{k}.jsonl" for k in ("train", "heldout", "tests")}
