"""HTTP side of online training (API-server process).

- ``POST /v1/training/examples``  JSON (one example, a list, or ``{"examples": [...]}``) or JSONL
  (``Content-Type: application/jsonl`` / ``application/x-ndjson``, one example per line).
  Example: ``{"context": "raw text" | [{"role", "content"}...], "decision": "text to learn"}``
  (``"messages"`` is an alias of a list context; ``"eos": false`` does not append the end token).
  All examples of a request are validated first (UTF-8, JSON, non-empty decision, token limits);
  any bad one → 400/413 and nothing is stored. A client ``id`` that is repeated in the body or
  was accepted before (the journal's ids, across restarts) → 409 naming the ids, nothing stored:
  every acknowledged example is trained, none is dropped as a duplicate. Accepted ones are appended to the journal and
  fsync'd, then queued in the worker(s); the reply is 202 ``{"ids": [...]}``.
- ``POST /v1/training/examples/lookup``  ``{"ids": [...]}`` (at most 1000 client ids) →
  ``{"examples": {id: state}}``, state ``unknown`` (never accepted), ``journaled`` (accepted, not
  trained yet) or the trainer's last done status (``trained``, ``skipped``, ``discarded``,
  ``failed``; after a restart without a checkpoint a ``trained`` example is trained again).
  What a client that sends its own ids (the dream loop) needs to recover its bookkeeping after a
  crash without reading the server's files.
- ``GET  /v1/training/status``      step, loss, queued/done, tokens/s, held-out perplexity
- ``POST /v1/training/pause``, ``POST /v1/training/resume``

All routes answer 404 unless ``[training] enabled = true`` and need the server's
API key when one is set.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from plasticity.http import auth
from plasticity.http.body import MAX_BODY, BodyError, json_object, loads
from plasticity.http.errors import error_response as _err
from plasticity.http.errors import private_dir
from plasticity.training import config as training_config
from plasticity.training.journal import Journal, JournalTail

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", re.ASCII)
MAX_LOOKUP_IDS = 1000
log = logging.getLogger("vllm.plasticity.training")


class ExampleError(ValueError):
    def __init__(self, msg, code=400):
        super().__init__(msg)
        self.code = code


class TrainingRoutes:
    def __init__(self):
        self.cfg = training_config.load()
        self.tokens: list[bytes] = []
        self.engine = None
        self.tok = None
        self.journal = Journal(self.cfg.journal) if (self.cfg.enabled and self.cfg.journal) else None
        self.known_ids: set[str] = set()
        # the trainer's done records (written by the worker), read incrementally for lookups
        self.done_tail = JournalTail(self.cfg.done_journal) if self.journal is not None else None
        self.done_status: dict[str, str] = {}
        self.done_lock = threading.Lock()  # lookups read the tail from worker threads
        self.version = None  # reads the live weights' version (prefix-cache salt), once training runs
        self.accepted = 0
        for d in (self.cfg.journal, self.cfg.snapshot_dir, self.cfg.checkpoint_dir, self.cfg.source):
            private_dir(d.parent if d is not None and d.suffix else d)
        self.lock = asyncio.Lock()
        self.metrics = None
        self._poll = None
        from .adapter_routes import ServedAdapters

        self.adapters = ServedAdapters(training_config.load_snapshots(self.cfg.source), self.weights_version)
        self.lora_enabled = False  # vLLM started with --enable-lora (set with the engine)
        self.lora_slots = 0  # vLLM's --max-loras

    def _guard(self, request: Request) -> JSONResponse | None:
        if not self.cfg.enabled:
            return _err("online training is disabled; set [training] enabled = true in the plasticity config", 404)
        if not auth.authorized(request.headers, self.tokens):
            return _err("training routes need the server's API key (Authorization: Bearer ...)", 401)
        if self.engine is None or self.tok is None:
            return _err("training is not initialised (no engine)", 503)
        return None

    # ---- parsing + validation (pure; raises ExampleError) ----
    @staticmethod
    def parse_body(raw: bytes, content_type: str) -> list:
        if len(raw) > MAX_BODY:
            raise ExampleError(f"body larger than {MAX_BODY} bytes", 413)
        try:
            text = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise ExampleError(f"body is not valid UTF-8 (byte {e.start})")
        ct = content_type.split(";")[0].strip().lower()
        if ct in ("application/jsonl", "application/x-ndjson", "application/x-jsonlines", "application/ndjson"):
            items = []
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    items.append(loads(line, f"line {i + 1}"))
                except BodyError as e:
                    raise ExampleError(str(e))
        else:
            try:
                doc = loads(text)
            except BodyError as e:
                raise ExampleError(f"{e} (send JSON, or JSONL with Content-Type: application/jsonl)")
            items = doc.get("examples") if isinstance(doc, dict) and "examples" in doc else doc
            if isinstance(items, dict):
                items = [items]
        if not isinstance(items, list) or not items:
            raise ExampleError("no examples: send an object, a list, {\"examples\": [...]}, or JSONL")
        return items

    def tokenize(self, i: int, ex) -> dict:
        cfg, tok = self.cfg, self.tok
        if not isinstance(ex, dict):
            raise ExampleError(f"example {i}: must be an object with 'context' and 'decision'")
        unknown = set(ex) - {"context", "messages", "decision", "eos", "id"}
        rid = ex.get("id")
        if rid is not None and not (isinstance(rid, str) and ID_RE.fullmatch(rid)):
            raise ExampleError(f"example {i}: 'id' must be 1-128 characters of letters, digits, . _ : -")
        if unknown:
            raise ExampleError(f"example {i}: unknown fields {sorted(unknown)}")
        ctx = ex.get("messages", ex.get("context"))
        dec = ex.get("decision")
        if not isinstance(dec, str) or not dec.strip():
            raise ExampleError(f"example {i}: 'decision' must be a non-empty string")
        if isinstance(ctx, str):
            if not ctx:
                raise ExampleError(f"example {i}: 'context' is empty")
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        elif isinstance(ctx, list) and ctx:
            for m in ctx:
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise ExampleError(f"example {i}: chat messages must be objects with string 'role' and 'content'")
            try:
                ctx_ids = tok.apply_chat_template(ctx, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            except Exception as e:  # noqa: BLE001 - template errors are the caller's
                raise ExampleError(f"example {i}: chat template failed: {e}")
        else:
            raise ExampleError(f"example {i}: 'context' must be a non-empty string or a list of chat messages")
        eos = ex.get("eos", True)
        if not isinstance(eos, bool):
            raise ExampleError(f"example {i}: 'eos' must be true or false")
        dec_ids = tok(dec, add_special_tokens=False)["input_ids"]
        if eos and tok.eos_token_id is not None:
            dec_ids = dec_ids + [int(tok.eos_token_id)]
        if not dec_ids or not ctx_ids:
            raise ExampleError(f"example {i}: context and decision must each produce at least one token")
        if len(dec_ids) > cfg.max_decision_tokens:
            raise ExampleError(f"example {i}: decision has {len(dec_ids)} tokens, more than "
                               f"max_decision_tokens = {cfg.max_decision_tokens}", 413)
        if len(ctx_ids) + len(dec_ids) > cfg.max_example_tokens:
            raise ExampleError(f"example {i}: {len(ctx_ids) + len(dec_ids)} tokens, more than "
                               f"max_example_tokens = {cfg.max_example_tokens}", 413)
        # a client id (e.g. the dream loop's) makes a resubmission after a crash recognisable
        return {"id": rid or "ex-" + uuid.uuid4().hex, "context": [int(t) for t in ctx_ids],
                "decision": [int(t) for t in dec_ids], "t": time.time()}

    def attach(self, r: APIRouter) -> None:
        plugin = self

        @r.post("/v1/training/examples")
        async def add_examples(request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            raw = await request.body()
            try:
                items = plugin.parse_body(raw, request.headers.get("content-type", ""))
                recs = await asyncio.to_thread(lambda: [plugin.tokenize(i, ex) for i, ex in enumerate(items)])
            except ExampleError as e:
                return _err(str(e), e.code)
            async with plugin.lock:
                dup = plugin.duplicates(recs)
                if dup:
                    return _err(f"example ids already accepted or repeated in this body: {dup[:20]}"
                                f"{' …' if len(dup) > 20 else ''}; nothing was stored", 409,
                                duplicates=dup[:1000])
                await asyncio.to_thread(plugin.journal.append, recs)  # durable before we answer
                plugin.known_ids.update(r["id"] for r in recs)
                plugin.accepted += len(recs)
            res = await plugin.engine.collective_rpc("plasticity_train_enqueue", args=(recs,))
            bad = [x for x in res if not x.get("ok")]
            full = sorted({i for x in res for i in x.get("queue_full", [])})
            body = {"ids": [x["id"] for x in recs], "journaled": True}
            if bad or full:
                body["warning"] = ("stored in the journal but not queued now (will be trained after a restart): "
                                   + (bad[0].get("error", "") if bad else f"queue full for {len(full)}"))
            return JSONResponse(body, status_code=202)

        @r.post("/v1/training/examples/lookup")
        async def lookup(request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            doc = await json_object(request)
            ids = doc.get("ids") if doc is not None else None
            if not (isinstance(ids, list) and 0 < len(ids) <= MAX_LOOKUP_IDS
                    and all(isinstance(i, str) and ID_RE.fullmatch(i) for i in ids)):
                return _err(f'body must be {{"ids": [1 to {MAX_LOOKUP_IDS} example ids]}}', 400)
            await asyncio.to_thread(plugin.refresh_done)
            return {"examples": {i: plugin.example_state(i) for i in ids}}

        @r.get("/v1/training/status")
        async def status(request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            return await plugin.fetch_status()

        for action in ("pause", "resume"):
            def make(action=action):
                async def route(request: Request):
                    if (g := plugin._guard(request)) is not None:
                        return g
                    res = await plugin.engine.collective_rpc(f"plasticity_train_{action}")
                    return {"paused": action == "pause", "ok": all(x.get("ok") for x in res)}
                return route
            r.add_api_route(f"/v1/training/{action}", make(), methods=["POST"])

        @r.post("/v1/training/settings")
        async def settings(request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            doc = await json_object(request)
            if doc is None:
                return _err('body must be a JSON object, e.g. {"lr": 1e-5}', 400)
            res = (await plugin.engine.collective_rpc("plasticity_train_settings", args=(doc,)))[0]
            if not res.get("ok"):
                return _err(res.get("error", "bad settings"), 400)
            res.pop("ok")
            return res

        @r.post("/v1/training/embed")
        async def embed(request: Request):
            """{"input": [text, ...]} → {"embeddings": [[...], ...]}: mean-pooled last hidden state
            of the live weights (≤ 64 texts, each cut to 2048 tokens)."""
            if (g := plugin._guard(request)) is not None:
                return g
            doc = await json_object(request)
            texts = doc.get("input") if doc is not None else None
            if not (isinstance(texts, list) and 0 < len(texts) <= 64 and all(isinstance(t, str) and t for t in texts)):
                return _err('body must be {"input": [non-empty strings, at most 64]}', 400)
            ids = [plugin.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            res = (await plugin.engine.collective_rpc("plasticity_train_embed", args=(ids,)))[0]
            if not res.get("ok"):
                return _err(res.get("error", "embedding failed"), 500)
            return {"embeddings": res["embeddings"], "dim": len(res["embeddings"][0])}

        @r.post("/v1/training/discard")
        async def discard(request: Request):
            if (g := plugin._guard(request)) is not None:
                return g
            res = (await plugin.engine.collective_rpc("plasticity_train_discard"))[0]
            if not res.pop("ok", False):
                return _err(res.get("error", "discard failed"), 500)
            return res

        from . import snapshot_routes

        snapshot_routes.attach(r, plugin)
        from . import adapter_routes

        adapter_routes.attach(r, plugin)
        from plasticity.dream import server as dream_server

        dream_server.attach(r, plugin)

    def weights_version(self) -> str | None:
        """The live weights' version, for the prefix-cache salt (None: training is off)."""
        return self.version.read() if self.version is not None else None

    def load_known_ids(self) -> None:
        """The ids of every example the journal holds (accepted before this start included)."""
        if self.journal is not None:
            self.known_ids = {r["id"] for r in self.journal.read() if isinstance(r.get("id"), str)}

    def refresh_done(self) -> None:
        """Read the done records the trainer appended since the last call (the last one wins)."""
        if self.done_tail is None:
            return
        with self.done_lock:
            for r in self.done_tail.read_new():
                if isinstance(r.get("id"), str):
                    self.done_status[r["id"]] = str(r.get("status", "trained"))

    def example_state(self, rid: str) -> str:
        if rid in self.done_status:
            return self.done_status[rid]
        return "journaled" if rid in self.known_ids else "unknown"

    def duplicates(self, recs: list[dict]) -> list[str]:
        """Ids of ``recs`` that repeat inside ``recs`` or are already in the journal."""
        seen, dup = set(), []
        for r in recs:
            if r["id"] in seen or r["id"] in self.known_ids:
                dup.append(r["id"])
            seen.add(r["id"])
        return sorted(set(dup))

    async def fetch_status(self) -> dict:
        res = await self.engine.collective_rpc("plasticity_train_status")
        st = dict(res[0])
        st.pop("ok", None)
        st["examples_accepted_since_start"] = self.accepted
        if len(res) > 1:
            st["workers"] = res
        if self.metrics is not None:
            self.metrics.update(st)
        return st

    async def init_state(self, engine_client, args, tokens) -> None:
        self.tokens = tokens
        self.lora_enabled = bool(getattr(args, "enable_lora", False))
        self.lora_slots = int(getattr(args, "max_loras", 0) or 0)
        if not self.cfg.enabled or engine_client is None:
            return
        from transformers import AutoTokenizer

        self.tok = await asyncio.to_thread(AutoTokenizer.from_pretrained, getattr(args, "tokenizer", None) or args.model)
        await asyncio.to_thread(self.load_known_ids)
        from plasticity.training.version import VersionReader, version_path

        self.version = VersionReader(version_path(self.cfg.journal))
        res = await engine_client.collective_rpc("plasticity_train_start")
        if not all(x.get("ok") for x in res):
            raise RuntimeError(f"plasticity: training could not start in the worker: {res}")
        self.engine = engine_client
        try:
            from .metrics import TrainingMetrics
            from .snapshot_routes import _forget_cached_kv

            self.metrics = TrainingMetrics()
            # a guard rollback is a jump of the weights too: drop K/V cached under the old ones
            self._poll = asyncio.get_running_loop().create_task(
                self.metrics.poll(self.fetch_status, on_trip=lambda: _forget_cached_kv(engine_client)))
        except Exception as e:  # noqa: BLE001 - no metrics is not a reason to refuse serving
            log.warning("plasticity: training metrics unavailable: %s", e)
        from plasticity.dream import server as dream_server

        await dream_server.init_state(self, engine_client, args)
