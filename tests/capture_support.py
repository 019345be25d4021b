"""A stand-in for vLLM's generation routes behind plasticity's capture middleware (no vLLM)."""

from __future__ import annotations

import asyncio
import json

from plasticity.server.capture import Capture, CaptureMiddleware


def fake_vllm(answer="Ticket received.", *, status=200, stream=False, kind="chat", raw: bytes | None = None):
    async def app(scope, receive, send):
        body = b""
        while True:  # read the request as vLLM does
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if raw is not None:
            out, ctype = raw, b"text/event-stream" if stream else b"application/json"
        elif stream:
            chunks = [answer[i:i + 4] for i in range(0, len(answer), 4)]
            key = (lambda t: {"delta": {"content": t}}) if kind == "chat" else (lambda t: {"text": t})
            out = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, **key(t)}]}).encode() + b"\n\n"
                           for t in chunks) + b"data: [DONE]\n\n"
            ctype = b"text/event-stream"
        else:
            ch = {"message": {"role": "assistant", "content": answer}} if kind == "chat" else {"text": answer}
            out, ctype = json.dumps({"choices": [{"index": 0, **ch}]}).encode(), b"application/json"
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": out, "more_body": False})
    return app


def asgi_post(mw, path, raw: bytes, headers=None, chunks: int = 2) -> dict:
    """POST ``raw`` through an ASGI app in ``chunks`` pieces, as a client may send it; returns
    {"status", "body", "reads"}. ``headers`` default: a correct Content-Length."""
    step = max(1, len(raw) // chunks)
    parts = [raw[i:i + step] for i in range(0, len(raw), step)] or [b""]
    got = {"status": None, "body": b"", "reads": 0}

    async def receive():
        got["reads"] += 1
        if parts:
            b = parts.pop(0)
            return {"type": "http.request", "body": b, "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    async def send(msg):
        if msg["type"] == "http.response.start":
            got["status"] = msg["status"]
        else:
            got["body"] += msg.get("body", b"")

    hdrs = list(headers) if headers is not None else [(b"content-length", str(len(raw)).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": hdrs}
    asyncio.run(mw(scope, receive, send))
    return got


def call(mw, path, body, headers=()):
    """One request through the middleware; returns (status, response bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got = asgi_post(mw, path, raw, headers, chunks=2)
    return got["status"], got["body"]


def middleware(db, app):
    cap = Capture(db)
    return cap, CaptureMiddleware(app, cap)
