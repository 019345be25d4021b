"""Behaviour tests (JSONL files), the generators that answer them, and held-out perplexity.

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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from plasticity.http.client import ClientError, request_json

from .metrics import perplexity

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

DEFAULT_MAX_TOKENS = 32
MAX_TOKENS_LIMIT = 4096
MAX_PATTERN_CHARS = 2000
MAX_FILE_BYTES = 16 << 20
ROLES = ("system", "user", "assistant")
FIELDS = ("prompt", "expect", "forbid", "max_tokens", "id")
DOC_SEPARATOR = "\n<|endoftext|>\n"


class BehaviourFileError(ValueError):
    """A behaviour test file (or one test object) that cannot be used; names the file and line."""

    def __init__(self, message: str, source: str | None = None, line: int | None = None):
        self.source, self.line, self.detail = source, line, message
        where = ""
        if source is not None and line is not None:
            where = f"{source}, line {line}: "
        elif source is not None:
            where = f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)


EvalHTTPError = ClientError  # the name this module's callers catch


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


# --------------------------------------------------------------------------- HTTP (OpenAI-compatible)

def _base_url(url: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
    u = url.rstrip("/")
    if u.endswith("/v1"):
        u = u[:-3]
    return u


def _served_model(base: str, api_key, timeout) -> str:
    out = request_json(base + "/v1/models", api_key=api_key, timeout=timeout)
    try:
        return out["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        raise EvalHTTPError(f"{base}/v1/models: no model listed: {str(out)[:200]}") from None


class ServerGenerator:
    """``generate_fn`` for an OpenAI-compatible server (greedy: temperature 0).

    Text prompts go to ``/v1/completions``, chat prompts to ``/v1/chat/completions``.
    ``extra_body`` is merged into every request (e.g. ``{"vllm_xargs": {"steer": "name"}}``).
    """

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, *,
                 timeout: float = 120.0, extra_body: dict | None = None):
        self.base = _base_url(url)
        self.api_key = api_key
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self.model = model or _served_model(self.base, api_key, timeout)

    def __call__(self, prompt, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
        body = {"model": self.model, "max_tokens": int(max_tokens), "temperature": 0.0, **self.extra_body}
        if isinstance(prompt, str):
            body["prompt"] = prompt
            out = request_json(self.base + "/v1/completions", body, api_key=self.api_key, timeout=self.timeout)
            try:
                return out["choices"][0]["text"] or ""
            except (KeyError, IndexError, TypeError):
                raise EvalHTTPError(f"/v1/completions: unexpected answer {str(out)[:200]}") from None
        body["messages"] = [{"role": m["role"], "content": m["content"]} for m in prompt]
        out = request_json(self.base + "/v1/chat/completions", body, api_key=self.api_key, timeout=self.timeout)
        try:
            return out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EvalHTTPError(f"/v1/chat/completions: unexpected answer {str(out)[:200]}") from None


def server_generator(url: str, api_key: str | None = None, model: str | None = None, **kw) -> ServerGenerator:
    """An OpenAI-compatible HTTP ``generate_fn``; ``model`` defaults to the first of ``/v1/models``."""
    return ServerGenerator(url, api_key, model, **kw)


# --------------------------------------------------------------------------- local (transformers)

def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = out["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


class LocalGenerator:
    """``generate_fn`` on a transformers causal LM, greedy; ``.model`` and ``.tokenizer`` are reusable."""

    def __init__(self, model, tokenizer, device: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.device = device or str(next(model.parameters()).device)

    def prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return [int(i) for i in self.tokenizer(prompt)["input_ids"]]
        return _chat_ids(self.tokenizer, [{"role": m["role"], "content": m["content"]} for m in prompt])

    def __call__(self, prompt, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
        import torch

        ids = self.prompt_ids(prompt)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        x = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=int(max_tokens),
                                      do_sample=False, pad_token_id=pad)
        return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def load_local(model_dir, *, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) from a transformers model folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if dt is None:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: not a model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dt).to(device).eval()
    tok = AutoTokenizer.from_pretrained(d)
    return model, tok


def local_generator(model_dir=None, *, model=None, tokenizer=None, dtype: str = "float32",
                    device: str = "cpu") -> LocalGenerator:
    """A greedy transformers ``generate_fn`` from a model folder (or an already loaded model + tokenizer)."""
    if model is None:
        if model_dir is None:
            raise ValueError("give model_dir, or model and tokenizer")
        model, tokenizer = load_local(model_dir, dtype=dtype, device=device)
    elif tokenizer is None:
        raise ValueError("a model needs its tokenizer")
    return LocalGenerator(model, tokenizer)


# --------------------------------------------------------------------------- held-out perplexity

def read_texts(path) -> list[str]:
    """Held-out texts: ``.jsonl`` (one ``{"text": ...}`` a line), ``.json`` (a list of strings or of
    ``{"text"}``) or anything else as plain text split on ``"\\n<|endoftext|>\\n"``."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BehaviourFileError(f"cannot read held-out texts: {e}", str(p)) from None
    texts: list[str] = []
    if p.suffix == ".jsonl":
        for n, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BehaviourFileError(f"invalid JSON ({e.msg})", str(p), n) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise BehaviourFileError('each line must be an object with a string "text"', str(p), n)
            texts.append(obj["text"])
    elif p.suffix == ".json":
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BehaviourFileError(f"invalid JSON ({e.msg} at line {e.lineno})", str(p)) from None
        if not isinstance(obj, list):
            raise BehaviourFileError('expected a list of strings or of {"text": ...} objects', str(p))
        for k, x in enumerate(obj):
            t = x.get("text") if isinstance(x, dict) else x
            if not isinstance(t, str):
                raise BehaviourFileError(f"entry {k} is not a string or a {{\"text\"}} object", str(p))
            texts.append(t)
    else:
        texts = raw.split(DOC_SEPARATOR)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BehaviourFileError("no held-out text", str(p))
    return texts


def windows(token_lists: Sequence[Sequence[int]], seq: int, max_tokens: int | None = None) -> list[list[int]]:
    """Cut each text's tokens into consecutive windows of ≤ ``seq`` tokens (windows of 1 token dropped:
    nothing to score); stop once ``max_tokens`` tokens are taken (the last window is truncated)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 2:
        raise ValueError(f"seq must be an integer ≥ 2, got {seq!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 2):
        raise ValueError(f"max_tokens must be an integer ≥ 2 or None, got {max_tokens!r}")
    out: list[list[int]] = []
    budget = math.inf if max_tokens is None else max_tokens
    for ids in token_lists:
        for i in range(0, len(ids), seq):
            w = [int(t) for t in ids[i: i + seq]][: int(min(seq, budget))]
            if len(w) >= 2:
                out.append(w)
                budget -= len(w)
            if budget < 2:
                return out
    return out


def _ppl_result(nll: float, n: int, n_windows: int, n_texts: int, seq: int) -> dict:
    return {"ppl": perplexity(nll, n), "nll_sum": nll, "tokens": n, "windows": n_windows, "texts": n_texts,
            "seq": seq}


def heldout_ppl_local(model, tokenizer, texts: Sequence[str], *, seq: int = 256, max_tokens: int | None = None,
                      progress: bool | str = False) -> dict:
    """Held-out perplexity of a transformers model (see the module docstring for the windows).

    Returns ``{"ppl", "nll_sum", "tokens" (scored), "windows", "texts", "seq"}``.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings (use read_texts(path) for a file)")
    toks = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ws = windows(toks, seq, max_tokens)
    if not ws:
        raise ValueError("no window of ≥ 2 tokens in the held-out texts")
    it: Iterable = ws
    if progress:
        from .report import progress as _progress

        it = _progress(ws, total=len(ws), desc=progress if isinstance(progress, str) else "held-out perplexity")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    try:
        with torch.no_grad():
            for w in it:
                x = torch.tensor([w], device=device)
                logits = model(input_ids=x).logits[0, :-1].float()
                nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
                n += len(w) - 1
    finally:
        model.train(was_training)
    return _ppl_result(nll, n, len(ws), len(texts), seq)


def heldout_ppl_server(url: str, texts: Sequence[str], *, api_key: str | None = None, model: str | None = None,
                       seq: int = 256, max_tokens: int | None = None, timeout: float = 300.0,
                       progress: bool | str = False) -> dict:
    """Held-out perplexity through an OpenAI-compatible vLLM server.

    Tokenises with the server's ``POST /tokenize`` (no special tokens), builds the same
    windows as :func:`heldout_ppl_local`, and sends each window as a token-id prompt to
    ``/v1/completions`` with ``"prompt_logprobs": 0`` and ``max_tokens: 1`` (vLLM then
    returns, per prompt position after the first, the log-probability of the actual
    token). ``seq`` is lowered to the server's ``max_model_len - 1`` if needed.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings (use read_texts(path) for a file)")
    base = _base_url(url)
    model = model or _served_model(base, api_key, timeout)
    toks, max_len = [], None
    for t in texts:
        out = request_json(base + "/tokenize", {"model": model, "prompt": t, "add_special_tokens": False},
                         api_key=api_key, timeout=timeout)
        if not isinstance(out, dict) or not isinstance(out.get("tokens"), list):
            raise EvalHTTPError(f"/tokenize: unexpected answer {str(out)[:200]}")
        toks.append(out["tokens"])
        if isinstance(out.get("max_model_len"), int):
            max_len = out["max_model_len"]
        if max_tokens is not None and sum(map(len, toks)) >= max_tokens:
            break  # enough text for the budget: skip tokenising the rest
    if max_len is not None and seq > max_len - 1:
        seq = max_len - 1
    ws = windows(toks, seq, max_tokens)
    if not ws:
        raise ValueError("no window of ≥ 2 tokens in the held-out texts")
    it: Iterable = ws
    if progress:
        from .report import progress as _progress

        it = _progress(ws, total=len(ws), desc=progress if isinstance(progress, str) else "held-out perplexity")
    nll, n = 0.0, 0
    for w in it:
        body = {"model": model, "prompt": w, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        out = request_json(base + "/v1/completions", body, api_key=api_key, timeout=timeout)
        try:
            plp = out["choices"][0]["prompt_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise EvalHTTPError(f"/v1/completions: no prompt_logprobs in the answer {str(out)[:200]}") from None
        if not isinstance(plp, list) or len(plp) != len(w):
            raise EvalHTTPError(f"/v1/completions: {len(plp) if isinstance(plp, list) else 'no'} prompt logprobs "
                                f"for a prompt of {len(w)} tokens")
        for tok, entry in zip(w[1:], plp[1:]):
            try:
                lp = float(entry[str(tok)]["logprob"])
            except (KeyError, TypeError, ValueError):
                raise EvalHTTPError(f"/v1/completions: no logprob for prompt token {tok}") from None
            if not math.isfinite(lp):
                lp = -9999.0  # vLLM's own clamp of -inf
            nll -= lp
            n += 1
    return _ppl_result(nll, n, len(ws), len(texts), seq)


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
