"""Snapshots served per request beside the live model, as LoRA adapters (API-server process).

- ``POST   /v1/snapshots/{name}/serve``  ``{"rank"? | "energy"?, "max_rank"?, "max_left_out"?}`` → 200
  the adapter's ranks and measured error; requests with ``"model": "<name>"`` then get the snapshot
- ``DELETE /v1/snapshots/{name}/serve``  unload it
- ``GET    /v1/snapshots``               ``served``: each adapter's ranks, error, version and ``stale``

The adapter is built **relative to the weights live now**: per tensor the exact delta (snapshot −
live, float64) factored by truncated SVD in the worker, between two training steps, so
``live + B·A`` is the snapshot within the reported error. It is loaded through vLLM's own run-time
LoRA loading (``OpenAIServingModels.load_lora_adapter``), each build from a new folder under a new
LoRA id, so no K/V of an older build is ever matched.

**Stale adapters are refused, never mixed.** When the live weights change (a training step, a
rollback, a merge), an adapter no longer turns them into its snapshot. Every generation request
naming an adapter is checked on arrival against the live weights' version the adapter was built
for; after a change it gets 409 naming the fix (``POST .../serve`` again rebuilds it against the
new live weights). A change that lands while a request is already generating reaches adapter and
base requests alike (the live weights change under both), as for any request during training.

``[snapshots] serve_max`` bounds how many are served at once and ``serve_max_rank`` their rank
(``--max-lora-rank``); ``plasticity serve`` sets ``--max-loras serve_max + 1``: **one LoRA slot stays
empty on vLLM CPU.** Its LoRA ops (``vllm/lora/ops/torch_ops``) gather each token's adapter with
``weights[index]``, and a base request's tokens carry index -1, which Python reads as the last slot.
In a batch that mixes base and adapter requests, base requests got the adapter of the last slot
when every slot was full (seen on vLLM CPU 0.32 with vanilla ``--lora-modules``, two adapters in two
slots: 0/8 base replies unchanged; with three slots: 8/8). vLLM fills the first free slot, so with
at most ``max_loras - 1`` adapters loaded the last one is never used and holds zeros.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from fastapi import Request

from plasticity.http.body import json_object
from plasticity.http.errors import error_response as _err
from plasticity.taskvec.snapshot_folder import NAME_RULE, is_snapshot_name
from plasticity.training.config import SnapshotsConfig

from .snapshot_routes import run_job

log = logging.getLogger("vllm.plasticity.training")
OPTIONS = ("rank", "energy", "max_rank", "max_left_out")


class ServedAdapters:
    """Which snapshots are served, built for which live weights; shared with the request middleware."""

    def __init__(self, cfg: SnapshotsConfig, weights_version):
        self.cfg = cfg
        self.weights_version = weights_version  # () -> the live weights' version now
        self.records: dict[str, dict] = {}
        self.lock = asyncio.Lock()

    def refusal(self, doc) -> str | None:
        """Why a generation request must be refused (it names a stale adapter), or None."""
        model = doc.get("model") if isinstance(doc, dict) else None
        rec = self.records.get(model) if isinstance(model, str) else None
        if rec is None:
            return None
        now = self.weights_version()
        if now == rec["weights_version"]:
            return None
        return (f"the adapter serving snapshot {model!r} was built for the live weights of version "
                f"{rec['weights_version']}; they are at {now} now (a training step, rollback or merge since), "
                f"so it would serve a mixture: POST /v1/snapshots/{model}/serve rebuilds it")

    def describe(self) -> dict:
        now = self.weights_version()
        return {n: {**{k: v for k, v in rec.items() if k != "path"}, "stale": now != rec["weights_version"]}
                for n, rec in self.records.items()}


def usable_slots(max_loras: int, serve_max: int, cpu: bool) -> int:
    """How many snapshots may be served at once: ``serve_max``, and on CPU one fewer than vLLM's
    slots (the last slot must stay empty, see the module's doc)."""
    return min(serve_max, max_loras - 1 if cpu else max_loras)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _models(request: Request):
    return getattr(request.app.state, "openai_serving_models", None)


def attach(r, plugin) -> None:
    adapters: ServedAdapters = plugin.adapters

    def refuse_off(request: Request):
        if adapters.cfg.serve_max == 0:
            return _err("serving snapshots as adapters is off: set [snapshots] serve_max = N in the plasticity "
                        "config (plasticity serve then starts vLLM with --enable-lora)", 409)
        models = _models(request)
        if models is None or not hasattr(models, "load_lora_adapter") or not plugin.lora_enabled:
            return _err("vLLM was started without --enable-lora: start it with plasticity serve and "
                        "[snapshots] serve_max, or pass --enable-lora --max-loras N yourself", 409)
        return None

    @r.post("/v1/snapshots/{name}/serve")
    async def serve(name: str, request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        if (g := refuse_off(request)) is not None:
            return g
        if not is_snapshot_name(name):
            return _err(f"bad snapshot name {name!r}: {NAME_RULE}", 400)
        raw = await request.body()
        doc = await json_object(request) if raw.strip() else {}
        if doc is None:
            return _err("body must be a JSON object: {\"rank\"? | \"energy\"?, \"max_rank\"?, \"max_left_out\"?}", 400)
        unknown = sorted(set(doc) - set(OPTIONS))
        if unknown:
            return _err(f"unknown fields {unknown}; allowed: {list(OPTIONS)}", 400)
        models = _models(request)
        if models.is_base_model(name):
            return _err(f"{name!r} is the served base model's name; a snapshot served under it would shadow it", 409)
        slots = usable_slots(plugin.lora_slots, adapters.cfg.serve_max, _on_cpu())
        if slots < 1:
            return _err(f"vLLM has {plugin.lora_slots} LoRA slot(s) (--max-loras); on CPU one must stay empty "
                        f"(base requests would read it): start vLLM with --max-loras {adapters.cfg.serve_max + 1}, "
                        "as plasticity serve does", 409)
        async with adapters.lock:
            if name not in adapters.records and len(adapters.records) >= slots:
                return _err(f"all {slots} adapter slots (min of [snapshots] serve_max and vLLM's usable "
                            f"--max-loras) are in use by {sorted(adapters.records)}: "
                            "DELETE /v1/snapshots/<name>/serve one first", 409)
            result, error = await run_job(plugin, "lora", {"name": name, **doc})
            if error is not None:
                return error
            from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

            old = adapters.records.get(name)
            if old is not None:
                await _unload(plugin, models, name, old)
            loaded = await models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=result["path"]))
            if not isinstance(loaded, str):
                shutil.rmtree(result["path"], ignore_errors=True)
                err = getattr(loaded, "error", None)
                return _err(f"vLLM did not load the adapter: {getattr(err, 'message', loaded)}",
                            int(getattr(err, "code", 500) or 500))
            rec = {**result, "lora_id": models.lora_requests[name].lora_int_id}
            adapters.records[name] = rec
        log.info("plasticity: serving snapshot %r as a LoRA adapter (ranks %s, rel error %.4f)", name,
                 result["ranks"], result["rel_error"])
        return {"served": name, **{k: v for k, v in rec.items() if k != "path"}}

    @r.delete("/v1/snapshots/{name}/serve")
    async def unserve(name: str, request: Request):
        if (g := plugin._guard(request)) is not None:
            return g
        async with adapters.lock:
            rec = adapters.records.get(name)
            if rec is None:
                return _err(f"snapshot {name!r} is not served", 404)
            await _unload(plugin, _models(request), name, rec)
        return {"unserved": name}


async def _unload(plugin, models, name: str, rec: dict) -> None:
    """Forget the adapter everywhere: vLLM's model list, the engine's LoRA cache, its folder."""
    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

    plugin.adapters.records.pop(name, None)
    if name in getattr(models, "lora_requests", {}):
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
    try:
        await plugin.engine.remove_lora(rec["lora_id"])
    except Exception as e:  # noqa: BLE001 - the id is never reused; an engine that kept it only holds memory
        log.warning("plasticity: engine kept LoRA %s of snapshot %r: %s", rec["lora_id"], name, e)
    shutil.rmtree(Path(rec["path"]), ignore_errors=True)
