"""What answers a behaviour test's prompt: a running OpenAI-compatible server (greedy, through the
project's HTTP client) or a local transformers model. Both are callables ``(prompt, max_tokens) ->
text``, where a prompt is a string or a list of chat messages."""

from __future__ import annotations

import re
from pathlib import Path

from plasticity.http.client import request_json

from .errors import EvalHTTPError

DEFAULT_MAX_TOKENS = 32  # a behaviour test's reply budget when its file gives none

# --------------------------------------------------------------------------- HTTP (OpenAI-compatible)

def server_base_url(url: str) -> str:
    """``http://host:port`` from a server URL given with or without its ``/v1`` suffix."""
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
        self.base = server_base_url(url)
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
