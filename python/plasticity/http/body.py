"""Request bodies: a size cap applied while reading, and JSON that cannot blow the stack.

The cap is checked against ``Content-Length`` before anything is read and again while the body
streams in, so a client cannot make the server buffer more than :data:`MAX_BODY` bytes. Parsed
JSON deeper than :data:`MAX_DEPTH` is refused with 400 instead of a ``RecursionError`` (500).
"""

from __future__ import annotations

import json

MAX_BODY = 16 << 20
MAX_DEPTH = 64


class BodyError(ValueError):
    """A body that must be refused; ``code`` is the HTTP status (400, 413)."""

    def __init__(self, msg: str, code: int = 400):
        super().__init__(msg)
        self.code = code


def declared_length(headers) -> int | None:
    """``Content-Length`` from ASGI headers (None when absent); a malformed one is a 400."""
    for k, v in headers:
        if k.lower() == b"content-length":
            try:
                n = int(v.decode("latin-1"), 10)
            except ValueError:
                raise BodyError("malformed Content-Length") from None
            if n < 0:
                raise BodyError("malformed Content-Length")
            return n
    return None


async def read_capped(receive, headers, cap: int = MAX_BODY) -> bytes | None:
    """The whole ASGI request body, refusing (413) past ``cap`` bytes; None if the client left."""
    n = declared_length(headers)
    if n is not None and n > cap:
        raise BodyError(f"body of {n} bytes is larger than the limit of {cap} bytes", 413)
    chunks, total, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        part = msg.get("body", b"")
        total += len(part)
        if total > cap:
            raise BodyError(f"body larger than the limit of {cap} bytes", 413)
        chunks.append(part)
        more = msg.get("more_body", False)
    return b"".join(chunks)


def depth(doc) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    best, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        best = max(best, d)
        if d > MAX_DEPTH:
            return d
        stack.extend((v, d + 1) for v in node if isinstance(v, (dict, list)))
    return best


def loads(raw: bytes | str, what: str = "body"):
    """Parse JSON; BodyError (400) for invalid JSON, bad UTF-8 or nesting deeper than MAX_DEPTH."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise BodyError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyError(f"{what} is not valid JSON: {e}") from None
    if depth(doc) > MAX_DEPTH:
        raise BodyError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
    return doc


async def json_object(request) -> dict | None:
    """A request's body as a JSON object, or None when it is not one (malformed, too deep, a list)."""
    try:
        doc = loads(await request.body())
    except BodyError:
        return None
    return doc if isinstance(doc, dict) else None
