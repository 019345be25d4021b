"""Held-out perplexity of general text, on a local transformers model or through a running server
(teacher-forced ``prompt_logprobs``), over fixed windows of the tokenised texts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from plasticity.http.client import request_json

from .errors import BehaviourFileError, EvalHTTPError
from .generators import server_base_url, _served_model
from .metrics import perplexity

DOC_SEPARATOR = "\n<|endoftext|>\n"  # between documents in a .txt held-out file

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


def _scored_windows(toks, seq: int, max_tokens: int | None, progress) -> tuple[list[list[int]], Iterable]:
    """The windows both paths score, and what to iterate (with a progress bar when asked)."""
    ws = windows(toks, seq, max_tokens)
    if not ws:
        raise ValueError("no window of ≥ 2 tokens in the held-out texts")
    if not progress:
        return ws, ws
    from .report import progress as _progress

    return ws, _progress(ws, total=len(ws), desc=progress if isinstance(progress, str) else "held-out perplexity")


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
    ws, it = _scored_windows(toks, seq, max_tokens, progress)
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
    base = server_base_url(url)
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
    ws, it = _scored_windows(toks, seq, max_tokens, progress)
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
