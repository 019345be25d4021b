"""A fake OpenAI-compatible plasticity server (journal, done journal, 409 on a repeated id and the
lookup route, through the real TrainingRoutes code), the dream-loop builders that tests/dream/ and
tests/attacks/ share, and ServerTokens: what the server journals for an example, for tests that
check a journal by content."""

from __future__ import annotations

import hashlib
import json
import random
import types
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from plasticity.dream import config as dc
from plasticity.dream.client import ServerClient
from plasticity.dream.loop import DreamLoop
from plasticity.dream.novelty import HashEmbedder
from plasticity.training import config as training_config
from plasticity.training.journal import JournalTail
from plasticity.training.routes import ID_RE, MAX_LOOKUP_IDS, TrainingRoutes


def token_key(context_ids, decision_ids) -> str:
    """The content key of a journal record: sha256 of its token ids."""
    return hashlib.sha256(json.dumps([list(map(int, context_ids)), list(map(int, decision_ids))],
                                     separators=(",", ":")).encode()).hexdigest()


class ServerTokens:
    """The token ids the server journals for an example: ``TrainingRoutes.tokenize`` itself."""

    def __init__(self, tokenizer):
        self.ns = types.SimpleNamespace(cfg=types.SimpleNamespace(max_decision_tokens=10**9,
                                                                  max_example_tokens=10**9), tok=tokenizer)

    @classmethod
    def load(cls, path: str) -> "ServerTokens":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def key(self, context, decision: str) -> str:
        rec = TrainingRoutes.tokenize(self.ns, 0, {"context": context, "decision": decision})
        return token_key(rec["context"], rec["decision"])


class FakeTok:
    """Stands in for the model's tokenizer in the fake server's tokenisation."""

    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 4000) for c in text]}

    def apply_chat_template(self, msgs, add_generation_prompt=True, tokenize=True, return_dict=True):
        s = "".join(f"<{m['role']}>{m['content']}" for m in msgs) + ("<assistant>" if add_generation_prompt else "")
        return {"input_ids": self(s)["input_ids"]}


WORDS = re.compile(r"[a-z]{5,}")


def default_gen(kind: str, body: dict, n: int) -> tuple[str, str]:
    """Deterministic, varied text built from the prompt's words and a counter."""
    last = body["messages"][-1]["content"]
    words = WORDS.findall(" ".join(m["content"] for m in body["messages"]).lower())
    rnd = random.Random(n * 7919 + len(last))
    pick = rnd.sample(words, min(4, len(words))) if words else ["thing"]
    if kind == "scenario":
        return f"How do {pick[0]} and {pick[-1]} interact when case {n} uses {pick[1 % len(pick)]}?", "stop"
    return f" the {pick[0]} part handles {pick[-1]}; then {pick[1 % len(pick)]} finishes step {n}.", "stop"


class FakeOpenAI:
    """``lookup=False`` stands for an older plugin without ``POST /v1/training/examples/lookup``."""

    def __init__(self, root: Path, *, lookup=True, key=None, tok=None):
        self._tr = TrainingRoutes
        self.root = Path(root)
        self.journal = self.root / "journal.jsonl"
        self.done = self.root / "journal.jsonl.done"
        self.lookup, self.key = lookup, key
        self.calls: list[tuple[str, object]] = []
        self.gen = default_gen
        self.judge_answer = "8"
        # score = "yes_no": the first token's top logprobs ({token: logprob}, a callable of the
        # request body, or a whole response body under the key "body")
        self.judge_top = {"Yes": -0.2, "No": -1.8, "The": -3.0}
        self.delay: dict[str, float] = {}
        self.fail: dict[str, tuple[int, object]] = {}
        self.refuse_decision: str | None = None  # a decision containing this → 413, like the token limit
        self.n = 0
        self.lock = threading.Lock()
        self.tok = tok or FakeTok()
        # the state TrainingRoutes' methods read: accepted ids, the done journal's statuses
        self.ns = types.SimpleNamespace(cfg=types.SimpleNamespace(max_decision_tokens=10**6, max_example_tokens=10**6),
                                        tok=self.tok, known_ids=set(), done_tail=JournalTail(self.done),
                                        done_status={}, done_lock=threading.Lock())
        self.trainer_seen: set[str] = set()
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.fake = self
        srv.daemon_threads = True
        self.srv = srv
        self.url = f"http://127.0.0.1:{srv.server_address[1]}"
        self.thread = threading.Thread(target=srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()

    def posts(self, path="/v1/training/examples"):
        return [b for p, b in self.calls if p == path]

    def journal_records(self):
        from plasticity.training.core import Journal

        return Journal(self.journal).read()

    def train(self):
        """The trainer: every journaled id not trained yet → the done journal (dedupe by id, like
        Trainer.enqueue's ``seen`` and recover()'s subtraction of the done journal)."""
        from plasticity.training.core import Journal

        done = {r["id"] for r in Journal(self.done).read()}
        new = []
        for r in self.journal_records():
            if r["id"] in done or r["id"] in self.trainer_seen:
                continue
            self.trainer_seen.add(r["id"])
            new.append({"id": r["id"], "step": len(done) + len(new) + 1, "status": "trained"})
        if new:
            Journal(self.done).append(new)
        return len(new)

    # the examples route, as training/routes.py does it (validation, tokenisation, 409 on a repeated
    # id, fsync'd journal, 202)
    def examples(self, raw: bytes, ctype: str):
        from plasticity.training.routes import ExampleError
        from plasticity.training.core import Journal

        try:
            items = self._tr.parse_body(raw, ctype)
            recs = []
            for i, ex in enumerate(items):
                if self.refuse_decision and self.refuse_decision in str(ex.get("decision")):
                    raise ExampleError(f"example {i}: decision has too many tokens", 413)
                recs.append(self._tr.tokenize(self.ns, i, ex))
        except ExampleError as e:
            return e.code, {"error": {"message": str(e)}}
        dup = self._tr.duplicates(self.ns, recs)
        if dup:
            return 409, {"error": {"message": f"example ids already accepted: {dup}"}, "duplicates": dup}
        Journal(self.journal).append(recs)
        self.ns.known_ids.update(r["id"] for r in recs)
        return 202, {"ids": [r["id"] for r in recs], "journaled": True}

    def lookup_states(self, body) -> tuple[int, dict]:
        ids = body.get("ids") if isinstance(body, dict) else None
        if not (isinstance(ids, list) and 0 < len(ids) <= MAX_LOOKUP_IDS
                and all(isinstance(i, str) and ID_RE.fullmatch(i) for i in ids)):
            return 400, {"error": {"message": "bad ids"}}
        self._tr.refresh_done(self.ns)
        return 200, {"examples": {i: self._tr.example_state(self.ns, i) for i in ids}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, obj, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _pre(self, path) -> bool:
        f = self.server.fake
        if f.key and self.headers.get("Authorization") != f"Bearer {f.key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        if path in f.delay:
            time.sleep(f.delay[path])
        if path in f.fail:
            code, body = f.fail[path]
            if isinstance(body, bytes):
                self._send(code, None, raw=body)
            else:
                self._send(code, body)
            return False
        return True

    def do_GET(self):
        f = self.server.fake
        f.calls.append((self.path, None))
        if not self._pre(self.path):
            return
        if self.path == "/v1/models":
            return self._send(200, {"data": [{"id": "fake-model", "root": str(f.root)}]})
        if self.path == "/v1/training/status":
            return self._send(200, {"examples_done": len(f.trainer_seen), "step": len(f.trainer_seen),
                                    "examples_queued": 0})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        f = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ctype = self.headers.get("Content-Type", "")
        try:
            body = json.loads(raw) if "jsonl" not in ctype else raw.decode()
        except ValueError:
            body = raw
        f.calls.append((self.path, body))
        path = self.path
        if path == "/v1/chat/completions":
            last = body["messages"][-1]["content"]
            kind = "judge" if ("Reply with one integer" in last or "Answer yes or no" in last) else (
                "scenario" if "notes from memory" in last else "response")
            pk = f"{path}#{kind}"
            if not self._pre(pk) or not self._pre(path):
                return
            with f.lock:
                f.n += 1
                n = f.n
            if kind == "judge" and body.get("logprobs"):
                top = f.judge_top(body) if callable(f.judge_top) else f.judge_top
                if isinstance(top, dict) and "body" in top:
                    return self._send(200, top["body"])
                return self._send(200, {"choices": [{"message": {"content": next(iter(top), "")},
                                                     "logprobs": {"content": [{"token": next(iter(top), ""),
                                                                               "top_logprobs": [
                                                         {"token": t, "logprob": lp} for t, lp in top.items()]}]},
                                                     "finish_reason": "length"}], "usage": {"completion_tokens": 1}})
            if kind == "judge":
                ans = f.judge_answer(body) if callable(f.judge_answer) else f.judge_answer
                return self._send(200, {"choices": [{"message": {"content": ans}, "finish_reason": "stop"}],
                                        "usage": {"completion_tokens": 2}})
            text, finish = f.gen(kind, body, n)
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                                 "finish_reason": finish}],
                                    "usage": {"completion_tokens": max(1, len(text) // 4)}})
        if not self._pre(path):
            return
        if path == "/v1/training/embed":
            return self._send(200, {"embeddings": HashEmbedder(64).embed(body["input"]), "dim": 64})
        if path == "/v1/training/examples":
            with f.lock:
                code, out = f.examples(raw, ctype)
            return self._send(code, out)
        if path == "/v1/training/examples/lookup" and f.lookup:
            with f.lock:
                code, out = f.lookup_states(body)
            return self._send(code, out)
        self._send(404, {"detail": "Not Found"})


# ---------------------------------------------------------------- fixtures


def make_cfg(fake=None, **over):
    t = training_config.from_dict({"enabled": True, "journal": str(fake.journal)}) if fake is not None else None
    sec = {"judge": "rubric", "cycles_per_hour": 360000.0, "seed": 1, "walk_length": 3, "novelty_threshold": 0.95}
    sec.update(over)
    return dc.from_dict(sec, training=t)


def make_loop(store, fake, cfg=None, **kw):
    cfg = cfg or make_cfg(fake)
    client = ServerClient(fake.url, fake.key, timeout=cfg.timeout_s)
    return DreamLoop(store, client, cfg, **kw)
