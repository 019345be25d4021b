"""The one JSON-over-HTTP client of the command-line tools (eval, snapshot CLI): stdlib only,
errors that say what went wrong and never a traceback from urllib."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class ClientError(RuntimeError):
    """A server answered with an error status, an unexpected body, or could not be reached."""


def request_json(url: str, body: dict | list | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0):
    """GET ``url`` (or POST ``body`` as JSON) and return the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        txt = e.read()[:500].decode("utf-8", "replace")
        hint = " (wrong or missing --api-key?)" if e.code == 401 else ""
        raise ClientError(f"{url}: HTTP {e.code}{hint}: {txt}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"{url}: cannot reach the server: {getattr(e, 'reason', e)}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None
