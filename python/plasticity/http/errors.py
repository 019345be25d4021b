"""One JSON error shape for every plasticity route, safe to show to any client.

Messages are cut to :data:`MAX_MESSAGE` characters (a refused megabyte input is not echoed back)
and absolute paths under the server's own folders (home, working directory, temp, the Python
prefix, and every folder registered with :func:`private_dir`) are reduced to their last part.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

from fastapi.responses import JSONResponse

MAX_MESSAGE = 400
_PRIVATE: set[str] = set()


def private_dir(path) -> None:
    """Register a server folder whose absolute location must not reach a client."""
    if path:
        p = os.path.realpath(str(path))
        if p not in ("/", ""):
            _PRIVATE.add(p.rstrip("/"))


for _d in (os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir(), sys.prefix, sys.base_prefix):
    private_dir(_d)


def _redact_paths(msg: str) -> str:
    for d in sorted(_PRIVATE, key=len, reverse=True):
        if d in msg:
            msg = re.sub(re.escape(d) + r"(?:/[^\s'\"]*)?", lambda m: os.path.basename(m.group(0).rstrip("/")) or "…",
                         msg)
    return msg


def public_message(msg) -> str:
    """``msg`` as a client may see it: no server paths, at most :data:`MAX_MESSAGE` characters."""
    msg = _redact_paths(str(msg))
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 20] + f"… ({len(msg)} chars)"
    return msg


def error_body(msg, code: int, param: str | None = None) -> bytes:
    err = {"message": public_message(msg), "type": "BadRequestError" if code < 500 else "Error", "code": code}
    if param is not None:
        err["param"] = param
    return json.dumps({"error": err}).encode()


def error_response(msg, code: int, param: str | None = None, **extra) -> JSONResponse:
    """A FastAPI response with the JSON error body (``extra`` keys go beside ``message``)."""
    err = json.loads(error_body(msg, code, param))
    err["error"].update(extra)
    return JSONResponse(err, status_code=code)
