"""The dream loop's client of the served model (OpenAI-compatible) and the plasticity routes, over
the project's one HTTP client (``plasticity.http.client``); every request carries
``X-Plasticity-Source: dream``.

Errors are :class:`DreamHTTPError` (``plasticity.http.client.ClientError``) with a ``kind``: ``timeout`` (no answer in time),
``connect`` (refused / unreachable), ``http`` (an error status; ``status`` holds it),
``garbage`` (a body that is not the JSON expected).
"""

from __future__ import annotations

import json

from plasticity.http.client import ClientError, call

DreamHTTPError = ClientError  # the name the dream loop catches
LOOKUP_BATCH = 1000  # the server's limit of ids per lookup


def http_json(url: str, method: str = "GET", body=None, *, key: str | None = None, timeout: float = 60.0,
              raw: bytes | None = None, ctype: str = "application/json") -> tuple[int, object]:
    """One request; returns ``(status, parsed JSON)`` for 2xx, raises DreamHTTPError otherwise."""
    # the source header keeps the loop's own generations out of conversation capture
    return call(url, method, body, api_key=key, timeout=timeout, raw=raw, ctype=ctype,
                headers={"X-Plasticity-Source": "dream"})


class ServerClient:
    """The served model's OpenAI-compatible API plus /v1/training/* of the plasticity plugin."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0):
        self.url, self.key, self.timeout = url.rstrip("/"), api_key or None, timeout
        self._model = model or None
        self._root = None

    def call(self, method: str, path: str, body=None, *, timeout: float | None = None, **kw):
        return http_json(self.url + path, method, body, key=self.key, timeout=timeout or self.timeout, **kw)[1]

    def _models(self):
        doc = self.call("GET", "/v1/models")
        try:
            first = doc["data"][0]
            self._model = self._model or str(first["id"])
            self._root = first.get("root")
        except (TypeError, KeyError, IndexError):
            raise DreamHTTPError(f"GET /v1/models: unexpected body {str(doc)[:200]}") from None

    @property
    def model(self) -> str:
        if self._model is None:
            self._models()
        return self._model

    @property
    def model_root(self) -> str | None:
        """The model path the server reports (``root`` in /v1/models)."""
        if self._root is None:
            self._models()
        return self._root

    def health(self, timeout: float = 5.0) -> bool:
        try:
            http_json(self.url + "/v1/models", key=self.key, timeout=timeout)
            return True
        except DreamHTTPError:
            return False

    def chat(self, messages: list[dict], *, temperature: float, max_tokens: int, top_p: float = 1.0,
             seed: int | None = None, xargs: dict | None = None, continue_final: bool = False,
             timeout: float | None = None) -> tuple[str, str, int]:
        """→ (text, finish_reason, completion tokens)."""
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_tokens": max_tokens, "top_p": top_p}
        if seed is not None:
            body["seed"] = int(seed)
        if xargs:
            body["vllm_xargs"] = dict(xargs)
        if continue_final:
            body.update(add_generation_prompt=False, continue_final_message=True)
        doc = self.call("POST", "/v1/chat/completions", body, timeout=timeout)
        try:
            ch = doc["choices"][0]
            text = ch["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError
            n = int((doc.get("usage") or {}).get("completion_tokens") or 0)
            return text, str(ch.get("finish_reason") or ""), n
        except (TypeError, KeyError, IndexError, ValueError):
            raise DreamHTTPError(f"chat completion: unexpected body {str(doc)[:200]}") from None

    def first_token_logprobs(self, messages: list[dict], *, xargs: dict | None = None, k: int = 20,
                             timeout: float | None = None) -> dict[str, float]:
        """The top ``k`` candidates for the answer's first token: {token text: logprob} (greedy, one token)."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": 1,
                "logprobs": True, "top_logprobs": int(k)}
        if xargs:
            body["vllm_xargs"] = dict(xargs)
        return top_logprobs_of(self.call("POST", "/v1/chat/completions", body, timeout=timeout))

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for i in range(0, len(texts), 64):
            part = [t if t.strip() else "." for t in texts[i:i + 64]]
            doc = self.call("POST", "/v1/training/embed", {"input": part})
            embs = doc.get("embeddings") if isinstance(doc, dict) else None
            if not (isinstance(embs, list) and len(embs) == len(part)
                    and all(isinstance(e, list) and e and all(isinstance(x, (int, float)) for x in e) for e in embs)):
                raise DreamHTTPError("POST /v1/training/embed: unexpected body")
            out.extend([float(x) for x in e] for e in embs)
        return out

    def submit(self, examples: list[dict]) -> list[str]:
        """POST /v1/training/examples (JSONL); → the ids the server assigned (journaled, fsync'd)."""
        raw = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()
        doc = self.call("POST", "/v1/training/examples", raw=raw, ctype="application/jsonl")
        ids = doc.get("ids") if isinstance(doc, dict) else None
        if not (isinstance(ids, list) and len(ids) == len(examples) and all(isinstance(i, str) for i in ids)):
            raise DreamHTTPError(f"POST /v1/training/examples: unexpected body {str(doc)[:200]}")
        return ids

    def lookup(self, ids: list[str]) -> dict[str, str]:
        """POST /v1/training/examples/lookup, 1000 ids per request; → {id: state} (``unknown``,
        ``journaled``, ``trained``, ``skipped``, ``discarded``, ``failed``)."""
        out: dict[str, str] = {}
        for i in range(0, len(ids), LOOKUP_BATCH):
            part = ids[i:i + LOOKUP_BATCH]
            doc = self.call("POST", "/v1/training/examples/lookup", {"ids": part})
            got = doc.get("examples") if isinstance(doc, dict) else None
            if not (isinstance(got, dict) and all(isinstance(got.get(x), str) for x in part)):
                raise DreamHTTPError(f"POST /v1/training/examples/lookup: unexpected body {str(doc)[:200]}")
            out.update((x, got[x]) for x in part)
        return out

    def training_status(self) -> dict:
        doc = self.call("GET", "/v1/training/status")
        if not isinstance(doc, dict):
            raise DreamHTTPError("GET /v1/training/status: not an object")
        return doc


def top_logprobs_of(doc) -> dict[str, float]:
    """{token: logprob} of the first generated token in an OpenAI chat completion with ``top_logprobs``
    (duplicate token texts keep the larger logprob); DreamHTTPError on any other shape."""
    try:
        top = doc["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        out: dict[str, float] = {}
        for t in top:
            tok, lp = t["token"], float(t["logprob"])
            if not isinstance(tok, str):
                raise TypeError
            out[tok] = max(lp, out.get(tok, float("-inf")))
    except (TypeError, KeyError, IndexError, ValueError):
        raise DreamHTTPError(f"chat completion: no top_logprobs in {str(doc)[:200]}") from None
    if not out:
        raise DreamHTTPError("chat completion: empty top_logprobs")
    return out
