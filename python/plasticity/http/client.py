"""The one JSON-over-HTTP client of plasticity's tools (eval, the snapshot CLI, steering train-in,
the dream loop, the demo): stdlib only, errors that say what went wrong and never a traceback from
urllib."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

MAX_BODY = 32 << 20  # a larger answer is refused, not read into memory


class ClientError(RuntimeError):
    """A request that did not give the JSON expected. ``kind`` says why: ``http`` (an error status,
    in ``status``), ``timeout`` (no answer in time), ``connect`` (refused, unreachable, reset), or
    ``garbage`` (an answer that is not the JSON expected; the default for callers that check a
    body's shape and raise with a message only)."""

    def __init__(self, message: str, kind: str = "garbage", status: int | None = None):
        super().__init__(message)
        self.kind, self.status = kind, status


def _is_timeout(e: BaseException) -> bool:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return True
    r = getattr(e, "reason", None)
    return isinstance(r, (TimeoutError, socket.timeout)) or "timed out" in str(r or e).lower()


def call(url: str, method: str = "GET", body=None, *, api_key: str | None = None, timeout: float = 120.0,
         raw: bytes | None = None, ctype: str = "application/json", headers: dict | None = None,
         max_body: int = MAX_BODY) -> tuple[int, object]:
    """One request (``body`` as JSON, or ``raw`` bytes of type ``ctype``); returns ``(status, parsed
    JSON)`` for a 2xx answer (an empty one is None) and raises :class:`ClientError` otherwise."""
    where = f"{method} {url}"
    hdrs = {"Content-Type": ctype, "Accept": "application/json", **(headers or {})}
    if api_key:
        hdrs["Authorization"] = f"Bearer {api_key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            txt = r.read(max_body + 1)
            code = r.status
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(4000).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the status is the news; a broken error body is not
            detail = ""
        hint = " (wrong or missing --api-key?)" if e.code == 401 else ""
        raise ClientError(f"{where}: HTTP {e.code}{hint}: {detail[:500]}", "http", e.code) from None
    except Exception as e:  # noqa: BLE001 - URLError, socket errors, timeouts, resets
        if _is_timeout(e):
            raise ClientError(f"{where}: no answer within {timeout:g} s", "timeout") from None
        raise ClientError(f"{where}: cannot reach the server: {getattr(e, 'reason', None) or e}", "connect") from None
    if len(txt) > max_body:
        raise ClientError(f"{where}: body larger than {max_body} bytes")
    try:
        return code, json.loads(txt or b"null")
    except ValueError:
        raise ClientError(f"{where}: the answer is not JSON: {txt[:200]!r}") from None


def request_json(url: str, body: dict | list | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0):
    """GET ``url`` (or POST ``body`` as JSON) and return the decoded JSON answer."""
    return call(url, "GET" if body is None else "POST", body, api_key=api_key, timeout=timeout)[1]
