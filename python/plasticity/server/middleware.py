"""ASGI middleware: validate and rewrite the steering flag of generation requests.

Runs in the API-server process, inside vLLM's auth middleware, before the
request is parsed by vLLM's routes, so a malformed flag gets a 400 here and
never reaches the engine. For a valid flag it writes the canonical
``vllm_xargs`` (or the server default when the request has none) and a
``cache_salt`` per steering config, so prefix-cached KV computed under
steering is never served to a request with other (or no) steering.
"""

from __future__ import annotations

import hashlib
import json

from plasticity.steering.spec import KEYS, SteerSpec, SteeringError

GEN_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
# Other paths that accept vllm_xargs: steering there is refused, not silently ignored.
OTHER_XARGS_PATHS = frozenset({"/v1/responses"})


def error_body(message: str, code: int = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": "vllm_xargs",
                                 "code": code}}).encode()


def _salt(user_salt, spec: SteerSpec) -> str:
    if user_salt is None:
        return spec.cache_salt()
    # Keep the user's partitioning and add ours; stay within vLLM's 128-char limit.
    return "plasticity-steer-" + hashlib.sha256(f"{user_salt}\0{spec.key!r}".encode()).hexdigest()[:32]


def rewrite_body(body: bytes, catalogue, path: str) -> bytes | None:
    """The new body, or None to pass the request through unchanged. Raises SteeringError (→ 400)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # vLLM answers malformed JSON itself
    if not isinstance(doc, dict):
        return None
    xargs = doc.get("vllm_xargs")
    if path in OTHER_XARGS_PATHS:
        if isinstance(xargs, dict) and any(k in xargs for k in KEYS):
            raise SteeringError(f"steering is supported on {sorted(GEN_PATHS)}, not {path}")
        return None
    if xargs is not None and not isinstance(xargs, dict):
        raise SteeringError(f"vllm_xargs must be an object, got {type(xargs).__name__}")
    spec = catalogue.resolve(xargs)
    if spec is None:
        return None
    xargs = {k: v for k, v in (xargs or {}).items() if k not in KEYS}
    if spec is False:
        doc["vllm_xargs"] = xargs or None
    else:
        xargs.update(spec.to_xargs())
        doc["vllm_xargs"] = xargs
        doc["cache_salt"] = _salt(doc.get("cache_salt"), spec)
    return json.dumps(doc).encode()


class SteeringMiddleware:
    def __init__(self, app, get_catalogue):
        self.app = app
        self.get_catalogue = get_catalogue

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        catalogue = self.get_catalogue()
        if catalogue is None or (path not in GEN_PATHS and path not in OTHER_XARGS_PATHS):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        try:
            new = rewrite_body(body, catalogue, path)
        except SteeringError as e:
            payload = error_body(str(e))
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        if new is not None:
            body = new
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope["headers"].append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
