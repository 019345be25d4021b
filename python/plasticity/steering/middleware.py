"""ASGI middleware in front of every route of the server: body limits, and the steering flag.

Runs in the API-server process, inside vLLM's auth middleware, before any route parses the body:

- **Every write request** (POST/PUT/PATCH, vLLM's routes and ours): ``Content-Length`` above
  :data:`plasticity.http.body.MAX_BODY` is refused (413) before a byte is read, and the body is
  read with the same cap, so no client can make the server buffer more.
- **vLLM's routes** (every non-plasticity write route of the app; :func:`generation_routes` lists
  them at start-up, so a route a later vLLM adds is covered without a list to update): JSON nested
  deeper than :data:`plasticity.http.body.MAX_DEPTH` gets 400 instead of a ``RecursionError``.
- **Steering**: on the routes whose body we know (:data:`REWRITE_PATHS`) a valid flag is rewritten
  into the canonical ``vllm_xargs``, salted for the prefix cache and signed for the worker; the
  server default is applied the same way; an invalid flag gets 400. On every other route a
  steering flag anywhere in the body gets 400 (it would otherwise be ignored or, worse, reach the
  engine unsalted). The worker steers only signed flags, so nothing else can steer a forward.
"""

from __future__ import annotations

import hashlib
import json

from plasticity.http.body import MAX_BODY, BodyError, loads, read_capped
from plasticity.http.errors import error_body
from plasticity.steering.spec import KEYS, SIG_KEY, SteerSpec, SteeringError, sign

REWRITE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
# plasticity's own routes parse (and bound) their bodies themselves; JSONL is valid there
OWN_PREFIXES = ("/v1/steering/", "/v1/training/", "/v1/snapshots", "/v1/rollback", "/v1/dream/")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_own(path: str) -> bool:
    return path.startswith(OWN_PREFIXES)


def generation_routes(app) -> list[str]:
    """The app's write routes that are not plasticity's: where a steering flag could arrive."""
    out = set()
    for r in getattr(app, "routes", ()):
        path, methods = getattr(r, "path", None), getattr(r, "methods", None) or set()
        if path and methods & WRITE_METHODS and not is_own(path):
            out.add(path)
    return sorted(out)


def _salt(user_salt, spec: SteerSpec | None, generations: tuple, weights: str | None) -> str:
    """The prefix-cache salt: K/V is reused only between requests with the same user salt, the same
    steering (vectors, scales, layers, and the same registration of each vector) and the same
    version of the live weights. Stays within vLLM's 128-character limit."""
    if user_salt is None and weights is None and not generations and spec is not None:
        return spec.cache_salt()
    text = f"{user_salt}\0{spec.key if spec else None!r}\0{generations!r}\0{weights}"
    prefix = "plasticity-steer-" if spec is not None else "plasticity-w-"
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:32]


def _has_steering(doc) -> bool:
    """Whether any ``vllm_xargs`` object anywhere in the body carries a steering key."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            x = node.get("vllm_xargs")
            if isinstance(x, dict) and any(isinstance(k, str) and k.startswith("steer") for k in x):
                return True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return False


def rewrite_doc(doc, catalogue, path: str, key: bytes | None, weights: str | None = None) -> dict | None:
    """The rewritten body of a request to one of vLLM's routes, or None to pass it unchanged.
    ``weights``: the live weights' version (salted in, so no K/V of older weights is reused).
    Raises SteeringError (→ 400)."""
    if path not in REWRITE_PATHS:
        if _has_steering(doc):
            raise SteeringError(f"steering is supported on {sorted(REWRITE_PATHS)} only, not {path}")
        return None
    if not isinstance(doc, dict):
        return None
    xargs = doc.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise SteeringError(f"vllm_xargs must be an object, got {type(xargs).__name__}")
    if isinstance(xargs, dict) and SIG_KEY in xargs:
        raise SteeringError(f"vllm_xargs.{SIG_KEY} is set by the server, not by clients")
    spec = catalogue.resolve(xargs)
    if spec is None and weights is None:
        return None
    if spec is False:
        doc["vllm_xargs"] = {k: v for k, v in xargs.items() if k not in KEYS} or None
        spec = None
    elif spec is not None:
        if key is None:
            raise SteeringError("steering is not ready yet (no key agreed with the engine)")
        xargs = {k: v for k, v in (xargs or {}).items() if k not in KEYS}
        canon = spec.to_xargs()
        xargs.update(canon)
        xargs[SIG_KEY] = sign(key, canon)
        doc["vllm_xargs"] = xargs
    gens = catalogue.generations(spec.names) if spec is not None else ()
    if spec is not None or weights is not None:
        doc["cache_salt"] = _salt(doc.get("cache_salt"), spec, gens, weights)
    return doc


async def _answer(send, code: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class PlasticityMiddleware:
    def __init__(self, app, get_catalogue, get_key=lambda: None, get_weights_version=lambda: None,
                 max_body: int = MAX_BODY, refuse_model=lambda doc: None):
        self.app = app
        self.get_catalogue = get_catalogue
        self.get_key = get_key
        self.get_weights_version = get_weights_version
        self.refuse_model = refuse_model  # doc -> why the model it names cannot serve now (409), or None
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in WRITE_METHODS:
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        try:
            body = await read_capped(receive, scope.get("headers", ()), self.max_body)
        except BodyError as e:
            return await _answer(send, e.code, error_body(e, e.code))
        if body is None:
            return  # the client went away
        new = None
        if not is_own(path) and body.strip():
            try:
                doc = loads(body)
            except BodyError as e:
                if "nested deeper" in str(e):
                    return await _answer(send, 400, error_body(e, 400))
                doc = None  # vLLM answers malformed JSON itself
            if doc is not None and (why := self.refuse_model(doc)) is not None:
                return await _answer(send, 409, error_body(why, 409, param="model"))
            if doc is not None:
                catalogue = self.get_catalogue()
                try:
                    if catalogue is None:
                        if _has_steering(doc):
                            raise SteeringError("steering is not initialised yet")
                    elif (out := rewrite_doc(doc, catalogue, path, self.get_key(),
                                             self.get_weights_version())) is not None:
                        new = json.dumps(out).encode()
                except SteeringError as e:
                    return await _answer(send, 400, error_body(e, 400, param="vllm_xargs"))
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
