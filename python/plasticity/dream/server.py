"""The dream loop inside the API-server process: ``GET /v1/dream/status`` and the background runner.

Wiring (in ``plasticity/training/routes.py``)::

    # TrainingRoutes.attach(), beside snapshot_routes.attach(r, plugin):
    from plasticity.dream import server as dream_server
    dream_server.attach(r, plugin)

    # end of TrainingRoutes.init_state() (after self.engine is set):
    from plasticity.dream import server as dream_server
    await dream_server.init_state(self, engine_client, args)

``GET /v1/dream/status`` answers 404 unless ``[dream] db`` is set (or the ``[dream]`` config is
invalid: 500, after the key check), needs the server's API key when one is set, and returns :func:`plasticity.dream.status.status_dict` (read from
SQLite, so it also reports a loop run by ``plasticity dream`` in another process) plus the
background runner's state. The runner starts only with ``[dream] enabled = true``, a
schedule other than ``manual`` and ``[training] enabled = true``; it is a daemon thread
that calls this same server over HTTP (so requests, steering and training go through the
ordinary routes) and is stopped at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os

from fastapi import Request

from plasticity.http import auth
from plasticity.http.errors import error_response

from .config import DreamConfig, DreamConfigError, load
from .runner import DreamRunner
from .status import status_dict as _status_from_db

log = logging.getLogger("vllm.plasticity.dream")

_RUNNER: DreamRunner | None = None
_CFG: DreamConfig | None = None
_CFG_ERROR: str | None = None


def config() -> DreamConfig | None:
    """The server's ``[dream]`` config (loaded once from ``$PLASTICITY_CONFIG``)."""
    global _CFG, _CFG_ERROR
    if _CFG is None and _CFG_ERROR is None:
        try:
            _CFG = load()
        except DreamConfigError as e:
            _CFG_ERROR = str(e)
    return _CFG


def start(url: str, api_key: str | None = None, cfg: DreamConfig | None = None) -> DreamRunner:
    """Start (once) the background dream loop against the server at ``url``."""
    global _RUNNER
    cfg = cfg or config()
    if cfg is None:
        raise DreamConfigError(_CFG_ERROR or "no [dream] config")
    if _RUNNER is not None and _RUNNER.thread is not None and _RUNNER.thread.is_alive():
        return _RUNNER
    _RUNNER = DreamRunner(cfg, url, api_key).start()
    atexit.register(stop)
    log.info("plasticity: dream loop started (schedule %s, %.0f cycles/h, store %s)", cfg.schedule,
             cfg.cycles_per_hour, cfg.db)
    return _RUNNER


def stop(timeout: float = 10.0) -> bool:
    return True if _RUNNER is None else _RUNNER.stop(timeout)


def status_dict(cfg: DreamConfig | None = None) -> dict:
    cfg = cfg or config()
    if cfg is None or cfg.db is None:
        return {"configured": False, "error": _CFG_ERROR or "set [dream] db in the plasticity config"}
    st = _status_from_db(cfg.db, _RUNNER)
    st["configured"] = True
    st["enabled"] = cfg.enabled
    st["schedule"] = cfg.schedule
    from plasticity.server import capture

    st["capture"] = capture.CURRENT.status() if capture.CURRENT is not None else {"enabled": False}
    return st


def _server_url(args) -> str:
    host = getattr(args, "host", None) or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if getattr(args, "ssl_keyfile", None) else "http"
    return f"{scheme}://{host}:{getattr(args, 'port', 8000)}"


def _api_key(args) -> str | None:
    keys = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY")
    if isinstance(keys, str):
        keys = [keys]
    keys = [k for k in (keys or []) if k]
    return keys[0] if keys else None


async def init_state(plugin, engine_client, args) -> None:
    """Start the background loop when configured (``plugin``: the TrainingRoutes instance)."""
    cfg = config()
    if cfg is None:
        raise RuntimeError(f"plasticity: {_CFG_ERROR}")
    if not cfg.enabled or cfg.schedule == "manual" or engine_client is None:
        return
    if not getattr(plugin.cfg, "enabled", False):
        log.error("plasticity: [dream] enabled needs [training] enabled = true (the loop trains through "
                  "/v1/training/examples); the dream loop is not started")
        return
    if cfg.db is None:
        log.error("plasticity: [dream] enabled but [dream] db is not set; the dream loop is not started")
        return
    await asyncio.to_thread(start, _server_url(args), _api_key(args), cfg)


def _unauthorised(plugin, request) -> bool:
    return not auth.authorized(request.headers, getattr(plugin, "tokens", None) or [])


def attach(router, plugin) -> None:
    err = error_response

    @router.get("/v1/dream/status")
    async def dream_status(request: Request):
        cfg = config()
        if cfg is not None and cfg.db is None:
            return err("the dream loop is not configured; set [dream] db in the plasticity config", 404)
        # the key before the config's error: that message names the server's files and settings
        if _unauthorised(plugin, request):
            return err("dream routes need the server's API key (Authorization: Bearer ...)", 401)
        if cfg is None:
            return err(f"the [dream] config is invalid: {_CFG_ERROR}", 500)
        return await asyncio.to_thread(status_dict, cfg)
