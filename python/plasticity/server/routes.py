"""The ``vllm.endpoint_plugins`` entry point: steering admin routes + request middleware.

Routes (the mutating ones are off unless ``[steering] admin = true``, and need
the server's API key when one is set):

- ``GET    /v1/steering/vectors``          list (name, layers, norm, source)
- ``POST   /v1/steering/vectors``          ``{"name", "path"}`` (file inside vectors_dir)
                                          | ``{"name", "values": {"<layer>": [...]}}``
                                          | ``{"name", "extract": {"pairs": [...], "method", "layers"}}``
                                          optional ``"replace": true``
- ``DELETE /v1/steering/vectors/{name}``
- ``GET    /v1/steering/default``, ``POST /v1/steering/default``
                                          ``{"vector", "scale", "layers"}`` or ``{"enabled": false}``
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from plasticity import config
from plasticity.http import auth
from plasticity.http.body import BodyError, loads
from plasticity.http.errors import error_response as _err
from plasticity.http.errors import private_dir
from plasticity.steering import config as steering_config
from plasticity.steering.files import load_vector_file
from plasticity.steering.spec import SteeringError

from plasticity.steering.catalogue import Catalogue, directions_from_values
from plasticity.steering.middleware import REWRITE_PATHS, PlasticityMiddleware, generation_routes
from plasticity.training.routes import TrainingRoutes

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it


async def _json_body(request: Request):
    """The body as parsed JSON; BodyError (400) for malformed or absurdly nested JSON."""
    return loads(await request.body())


class PlasticityEndpoints:
    name = "plasticity_http"
    required_tasks = ("generate",)

    def __init__(self):
        self.catalogue: Catalogue | None = None
        self.cfg = steering_config.load()
        self.tokens: list[bytes] = []
        self.model_path: str | None = None
        self._hf = None  # transformers copy for extraction when training is off, loaded on first use
        self.request_key: bytes | None = None  # signs validated steering flags for the worker
        self.training = TrainingRoutes()  # /v1/training/* (off unless [training] enabled)
        private_dir(self.cfg.vectors_dir)

    # ---- auth ----
    def _guard(self, request: Request) -> JSONResponse | None:
        if not self.cfg.admin:
            return _err("steering admin routes are disabled; set [steering] admin = true in the plasticity config", 403)
        if not auth.authorized(request.headers, self.tokens):
            return _err("steering admin routes need the server's API key (Authorization: Bearer ...)", 401)
        if self.catalogue is None:
            return _err("steering is not initialised (no engine)", 503)
        return None

    async def _admin_body(self, request: Request) -> dict | JSONResponse:
        """An admin write's guard, then its body as a JSON object: the object, or the error answer."""
        if (g := self._guard(request)) is not None:
            return g
        try:
            body = await _json_body(request)
        except BodyError as e:
            return _err(str(e), e.code)
        return body if isinstance(body, dict) else _err("body must be a JSON object", 400)

    def attach_router(self, app: FastAPI) -> None:
        r = APIRouter()
        plugin = self

        @r.get("/v1/steering/vectors")
        async def list_vectors():
            if plugin.catalogue is None:
                return _err("steering is not initialised (no engine)", 503)
            c = plugin.catalogue
            return {"hidden_size": c.hidden, "num_layers": c.num_layers,
                    "vectors": [e.to_json() for e in c.entries.values()]}

        @r.post("/v1/steering/vectors")
        async def add_vector(request: Request):
            if not isinstance(body := await plugin._admin_body(request), dict):
                return body
            c = plugin.catalogue
            try:
                name, replace = body.get("name"), body.get("replace", False)
                if not isinstance(replace, bool):
                    raise SteeringError("'replace' must be true or false")
                sources = [k for k in ("path", "values", "extract") if k in body]
                if len(sources) != 1:
                    raise SteeringError("give exactly one of 'path', 'values', 'extract'")
                async with c.lock:
                    if "path" in body:
                        p = c.safe_path(body["path"])
                        dirs, _ = await asyncio.to_thread(load_vector_file, p)
                        source = f"file:{p.name}"
                    elif "values" in body:
                        dirs, source = directions_from_values(body["values"]), "inline"
                    else:
                        dirs, source = await plugin._extract(body["extract"]), "extract"
                    e = await c.add(name, dirs, source, replace=replace)
            except SteeringError as ex:
                return _err(str(ex), 400)
            return e.to_json()

        @r.delete("/v1/steering/vectors/{name}")
        async def delete_vector(name: str, request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            c = plugin.catalogue
            async with c.lock:
                try:
                    await c.remove(name)
                except KeyError:
                    return _err(f"no steering vector named {name!r}", 404)
                except SteeringError as ex:
                    return _err(str(ex), 409)
            return {"deleted": name}

        @r.get("/v1/steering/default")
        async def get_default():
            c = plugin.catalogue
            d = c.default if c else None
            return {"enabled": d is not None, **(d.to_xargs() if d else {})}

        @r.post("/v1/steering/default")
        async def set_default(request: Request):
            if not isinstance(body := await plugin._admin_body(request), dict):
                return body
            c = plugin.catalogue
            try:
                async with c.lock:
                    c.default = c.spec_from_default(body)
            except SteeringError as ex:
                return _err(str(ex), 400)
            d = c.default
            return {"enabled": d is not None, **(d.to_xargs() if d else {})}

        plugin.training.attach(r)
        app.include_router(r)
        app.add_middleware(PlasticityMiddleware, get_catalogue=lambda: plugin.catalogue,
                           get_key=lambda: plugin.request_key,
                           get_weights_version=plugin.training.weights_version,
                           refuse_model=plugin.training.adapters.refusal)
        self.app = app
        from plasticity.dream import server as dream_server

        from . import capture

        capture.install(app, dream_server.config())

    async def _extract(self, spec) -> dict:
        from plasticity.steering import extract as ex

        if not isinstance(spec, dict):
            raise SteeringError("'extract' must be an object {pairs, method, layers}")
        pairs = ex.check_pairs(spec.get("pairs"))
        method = spec.get("method", "pca_diff")
        if method not in ex.METHODS:
            raise SteeringError(f"method must be one of {list(ex.METHODS)}")
        layers = spec.get("layers")
        layers = ex.parse_layers(None if layers is None else str(layers).strip("[] ").replace(" ", ""),
                                 self.catalogue.num_layers)

        if self.training.engine is not None:
            return await self._extract_live(pairs, method, layers)

        def run():
            # Without online training the worker keeps vLLM's repacked weights, which
            # transformers cannot run: read the served model's files in this process.
            if self._hf is None:
                self._hf = ex.load_model(self.model_path)
            model, tok = self._hf
            return ex.extract(model, tok, pairs, method=method, layers=layers)

        return await asyncio.to_thread(run)

    async def _extract_live(self, pairs, method, layers) -> dict:
        """With online training on, the worker extracts on its live weights (the model as served
        now, trained or rolled back), on its training thread between two steps: no second copy
        of the model in this process, and no vector of weights that are no longer served."""
        import json

        import numpy as np

        from plasticity.training.snapshot_routes import run_job

        result, error = await run_job(self.training, "extract", {"pairs": [list(p) for p in pairs],
                                                                 "method": method, "layers": layers})
        if error is not None:
            raise SteeringError(f"extraction in the worker failed: {json.loads(error.body)['error']['message']}")
        return {int(k): np.asarray(v, dtype=np.float32) for k, v in result["directions"].items()}

    async def init_state(self, engine_client, state, args) -> None:
        if engine_client is None:
            return
        from plasticity.vllm import extension

        if not extension.active(getattr(args, "worker_extension_cls", None), os.environ.get(config.ENV)):
            log.warning("plasticity: installed but off on this server (no --worker-extension-cls, no %s); "
                        "steering flags are refused. `plasticity serve` turns it on.", config.ENV)
            return
        self.tokens = auth.key_digests(args)
        self.model_path = getattr(args, "model", None)
        await self.training.init_state(engine_client, args, self.tokens)
        results = await engine_client.collective_rpc("plasticity_info")
        info = results[0]
        if not info.get("ok"):
            raise RuntimeError(f"plasticity: worker steering state unavailable: {info.get('error')}")
        # One signing key for every worker (and every API server: the first proposal wins).
        keys = await engine_client.collective_rpc("plasticity_request_key", args=(secrets.token_bytes(32),))
        if not all(k.get("ok") for k in keys) or len({k["key"] for k in keys}) != 1:
            raise RuntimeError(f"plasticity: workers did not agree on a steering key: {keys}")
        self.request_key = keys[0]["key"]
        log.info("plasticity: steering flags are validated on %s and refused on the other write routes: %s",
                 sorted(REWRITE_PATHS), generation_routes(getattr(self, "app", None)))
        cat = Catalogue(engine_client, self.cfg, info)
        await cat.load_folder()
        cat.default = cat.spec_from_default(self.cfg.default)
        self.catalogue = cat
        state.plasticity_steering = cat
        log.info("plasticity: steering ready (%d vectors, default %s, admin %s)", len(cat.entries),
                 cat.default.to_xargs() if cat.default else None, "on" if self.cfg.admin else "off")
