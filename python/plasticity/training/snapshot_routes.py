"""HTTP side of task vectors and snapshots (API-server process); same switch and key as training.

- ``GET  /v1/snapshots``                 list (metadata), the current one, how the base is kept
- ``POST /v1/snapshots``                 ``{"name", "note"?}`` → 201 metadata (τ = W_live − W_base)
- ``GET  /v1/snapshots/{name}``          metadata
- ``POST /v1/snapshots/{name}/evals``    ``{...}`` appended to the snapshot's ``evals`` (``plasticity eval``)
- ``POST /v1/snapshots/apply``           ``{"method": "add"|"negate", "snapshot", "scale"?}`` (live += s·τ)
                                         | ``{"method": "task_arithmetic"|"ties", "snapshots": [...],
                                         ``"weights"?, "lambda"?, "density"?, "normalize"?, "relative_to"?}``
                                         (live = base + merge; with ``relative_to`` R: base + τR + merge(τi − τR))
- ``POST /v1/rollback``                  ``{"to": "base" | name}`` (bit-identical)
- ``POST|DELETE /v1/snapshots/{name}/serve``  a snapshot served per request as a LoRA adapter
                                         (``training/adapter_routes.py``)

Each operation runs in the worker on the training thread between two steps (serving
continues); the route polls the job and answers with its result or a 4xx naming the problem.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from plasticity.http.body import json_object
from plasticity.http.errors import error_response as _err


log = logging.getLogger("vllm.plasticity.training")  # under vllm.* so vLLM's handlers print it

JOB_TIMEOUT_S = 1800
WEIGHT_OPS = frozenset({"restore", "apply"})  # operations that change the live weights in one jump


async def _forget_cached_kv(engine, tries: int = 20) -> bool:
    """Drop vLLM's prefix cache after a jump of the weights: K/V cached under the old weights would
    otherwise be reused for the same prompt prefix (an eval right after a rollback would then
    partly measure the previous model). vLLM refuses while blocks are in use by running requests,
    so retry briefly, then give up with a warning (those requests finish on the old K/V anyway)."""
    for _ in range(tries):
        try:
            if await engine.reset_prefix_cache():
                return True
        except Exception as e:  # noqa: BLE001 - an engine without the call: nothing cached to forget
            log.warning("plasticity: reset_prefix_cache failed: %s", e)
            return False
        await asyncio.sleep(0.05)
    log.warning("plasticity: prefix cache not reset after a weight change (requests kept running)")
    return False




async def run_job(plugin, op: str, args: dict) -> tuple[dict | None, JSONResponse | None]:
    """Run snapshot operation ``op`` on the worker's training thread: (result, None) or (None, error)."""
    res = (await plugin.engine.collective_rpc("plasticity_tv_submit", args=(op, args)))[0]
    if not res.get("ok"):
        return None, _err(res.get("error", "snapshot operation failed"), 400)
    jid, t0 = res["job"], time.monotonic()
    while time.monotonic() - t0 < JOB_TIMEOUT_S:
        job = (await plugin.engine.collective_rpc("plasticity_tv_job", args=(jid,)))[0]["job"]
        if job.get("done"):
            if job.get("ok"):
                if op in WEIGHT_OPS:
                    await _forget_cached_kv(plugin.engine)
                return job["result"], None
            return None, _err(job.get("error", "failed"), int(job.get("code") or 500))
        await asyncio.sleep(0.05)
    return None, _err(f"snapshot operation {op} did not finish in {JOB_TIMEOUT_S} s (job {jid})", 504)


def attach(r, plugin) -> None:
    async def run(op: str, args: dict, ok_code: int = 200):
        result, error = await run_job(plugin, op, args)
        return error if error is not None else JSONResponse(result, status_code=ok_code)

    @r.get("/v1/snapshots")
    async def list_snapshots(request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        res = (await plugin.engine.collective_rpc("plasticity_tv_list"))[0]
        res.pop("ok", None)
        res["served"] = plugin.adapters.describe()
        return res

    @r.post("/v1/snapshots")
    async def save(request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        doc = await json_object(request)
        if doc is None or not isinstance(doc.get("name"), str):
            return _err('body must be {"name": "...", "note"?: "..."}', 400)
        if "note" in doc and not isinstance(doc["note"], str):
            return _err("'note' must be a string", 400)
        return await run("save", {"name": doc["name"], "note": doc.get("note")}, 201)

    @r.post("/v1/snapshots/apply")
    async def apply(request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        doc = await json_object(request)
        if doc is None:
            return _err("body must be a JSON object", 400)
        return await run("apply", doc)

    @r.get("/v1/snapshots/{name}")
    async def meta(name: str, request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        res = (await plugin.engine.collective_rpc("plasticity_tv_meta", args=(name,)))[0]
        if "meta" not in res:
            return _err(res.get("message") or res.get("error", "failed"), int(res.get("error_code") or 500))
        return res["meta"]

    @r.post("/v1/snapshots/{name}/evals")
    async def add_eval(name: str, request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        doc = await json_object(request)
        if doc is None:
            return _err("body must be a JSON object (an eval report)", 400)
        return await run("annotate", {"name": name, "eval": doc})

    @r.post("/v1/rollback")
    async def rollback(request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        doc = await json_object(request)
        if doc is None or not isinstance(doc.get("to"), str):
            return _err('body must be {"to": "base" | "<snapshot name>"}', 400)
        return await run("restore", {"to": doc["to"]})
