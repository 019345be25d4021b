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


def call(mw, path, body, headers=()):
    """One request through the middleware; returns (status, response bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parts = [raw[: len(raw) // 2], raw[len(raw) // 2:]]  # two chunks, as a client may send
    got = {"status": None, "body": b""}

    async def receive():
        if parts:
            b = parts.pop(0)
            return {"type": "http.request", "body": b, "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    async def send(msg):
        if msg["type"] == "http.response.start":
            got["status"] = msg["status"]
        else:
            got["body"] += msg.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": list(headers)}
    asyncio.run(mw(scope, receive, send))
    return got["status"], got["body"]


def middleware(db, app):
    cap = Capture(db)
    return cap, CaptureMiddleware(app, cap)
