"""The server's API key, checked the same way on every plasticity route."""

from __future__ import annotations

import hashlib
import os
import secrets


def key_digests(args) -> list[bytes]:
    """SHA-256 digests of the server's API keys (``--api-key`` or ``VLLM_API_KEY``); empty: no key."""
    keys = [k for k in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]) if k]
    if isinstance(keys, str):
        keys = [keys]
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def authorized(headers, digests: list[bytes]) -> bool:
    """True when no key is set, or the request carries ``Authorization: Bearer <one of them>``."""
    if not digests:
        return True
    scheme, _, tok = headers.get("authorization", "").partition(" ")
    h = hashlib.sha256(tok.encode()).digest()
    # compare against every key, so the time taken does not say which one nearly matched
    ok = [secrets.compare_digest(h, t) for t in digests]
    return scheme.lower() == "bearer" and any(ok)
