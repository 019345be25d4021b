"""Opt-in capture of served conversations into the memory store (the fast stage of the two-stage
memory; the dream loop consolidates later). ``[dream] capture = true`` with ``[dream] db``.

An ASGI middleware in the API-server process: it copies the request body as vLLM reads it and the
response body as vLLM sends it (both bounded), and after the response has gone out stores
``messages`` + the answer with ``MemoryStore.capture_conversation`` in a worker thread. It never
changes or delays a response and never fails a request: a body over the bound, a non-200 answer,
an unparsable stream or a store error is "not captured" (counted and logged). Requests from the
dream loop itself (header ``X-Plasticity-Source: dream``) are not captured, so the loop does not
feed on its own dreams.
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("vllm.plasticity.memory")

PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "text"}
MAX_BODY = 1 << 20  # bytes kept of a request or a response; larger ones are not captured
SOURCE_HEADER = b"x-plasticity-source"


def answer_of(kind: str, body: bytes, streamed: bool) -> str | None:
    """The first choice's text from a JSON answer or an SSE stream; None when there is none."""
    try:
        if not streamed:
            ch = json.loads(body)["choices"][0]
            return ch["message"]["content"] if kind == "chat" else ch["text"]
        parts = []
        for line in body.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            for ch in json.loads(line[5:]).get("choices") or []:
                if ch.get("index", 0) != 0:
                    continue
                piece = (ch.get("delta") or {}).get("content") if kind == "chat" else ch.get("text")
                if isinstance(piece, str):
                    parts.append(piece)
        return "".join(parts)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


class Capture:
    """The store side: one capture per conversation, in a thread; counters for the status."""

    def __init__(self, db, importance: float = 0.3):
        self.db, self.importance = db, importance
        self.captured = self.skipped = self.failed = 0
        self.last_error: str | None = None

    def _store(self, messages, answer: str) -> None:
        from plasticity.memory import MemoryStore

        with MemoryStore(self.db) as s:
            s.capture_conversation(messages, answer, importance=self.importance)

    async def add(self, messages, answer: str | None) -> bool:
        if not answer or not answer.strip() or not messages:
            self.skipped += 1
            return False
        try:
            await asyncio.to_thread(self._store, messages, answer)
        except Exception as e:  # noqa: BLE001 - capture must never fail or stall serving
            self.failed += 1
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("plasticity: conversation not captured: %s", self.last_error)
            return False
        self.captured += 1
        return True

    def status(self) -> dict:
        return {"enabled": True, "db": str(self.db), "captured": self.captured, "skipped": self.skipped, "failed": self.failed,
                "last_error": self.last_error}


class CaptureMiddleware:
    def __init__(self, app, capture: Capture):
        self.app = app
        self.capture = capture

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").removeprefix(scope.get("root_path", "")) if scope["type"] == "http" else ""
        kind = PATHS.get(path)
        if kind is None or scope.get("method") != "POST" or any(
                k.lower() == SOURCE_HEADER and v.strip().lower() == b"dream" for k, v in scope.get("headers", [])):
            return await self.app(scope, receive, send)
        req, resp = [], []
        sizes = [0, 0]
        state = {"status": None, "stream": False}

        async def tee_receive():
            msg = await receive()
            if msg["type"] == "http.request" and sizes[0] <= MAX_BODY:
                b = msg.get("body", b"")
                sizes[0] += len(b)
                req.append(b)
            return msg

        async def tee_send(msg):
            if msg["type"] == "http.response.start":
                state["status"] = msg.get("status")
                ctype = dict((k.lower(), v) for k, v in msg.get("headers", [])).get(b"content-type", b"")
                state["stream"] = b"text/event-stream" in ctype
            elif msg["type"] == "http.response.body" and sizes[1] <= MAX_BODY:
                b = msg.get("body", b"")
                sizes[1] += len(b)
                resp.append(b)
            await send(msg)

        await self.app(scope, tee_receive, tee_send)
        if state["status"] != 200 or sizes[0] > MAX_BODY or sizes[1] > MAX_BODY:
            self.capture.skipped += 1
            return
        try:
            doc = json.loads(b"".join(req))
            messages = doc.get("messages") if kind == "chat" else doc.get("prompt")
        except (ValueError, AttributeError):
            self.capture.skipped += 1
            return
        if not isinstance(messages, str if kind == "text" else list):  # token ids, a batch, not chat
            self.capture.skipped += 1
            return
        await self.capture.add(messages, answer_of(kind, b"".join(resp), state["stream"]))


CURRENT: Capture | None = None


def install(app, cfg) -> Capture | None:
    """Add the middleware when ``[dream] capture = true``. ``cfg``: the [dream] section (None when
    it is missing or bad: the dream status route reports why; capture stays off). Passed in by
    the caller so this module never imports the dream routes, which read :data:`CURRENT`."""
    global CURRENT
    if cfg is None or not cfg.capture or cfg.db is None:
        return None
    CURRENT = Capture(cfg.db, cfg.capture_importance)
    app.add_middleware(CaptureMiddleware, capture=CURRENT)
    log.info("plasticity: capturing served conversations into %s", cfg.db)
    return CURRENT
