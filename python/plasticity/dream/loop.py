"""The dream loop: memories → scenarios → judge → novelty → the training journal, exactly once.

One cycle (:meth:`DreamLoop.run_cycle`):

1. ``store.random_walk`` picks ``walk_length`` colliding notes;
2. the served model (``/v1/chat/completions``, with ``[dream] vllm_xargs`` so steering can
   apply) writes a scenario — a user message that needs all the notes — at ``temperature``;
3. it answers that scenario as the assistant (the notes in a system message, the answer
   optionally starting with ``response_prefix``) at the same temperature;
4. the judge scores it (``judge.py``); below ``accept_threshold`` → ``low_score``;
5. the novelty filter (``novelty.py``) rejects near-duplicates of the accepted set;
6. the candidate is stored with its score and reason (``add_candidate``); an accepted one is
   queued in the same transaction, as the training example
   ``{"context": [{"role": "user", "content": scenario}], "decision": response}``
   (the notes are *not* in the context: the answer is to come from the weights).

Submission (:meth:`DreamLoop.submit_pending`) follows the store's exactly-once protocol:
``queued`` rows are POSTed to ``/v1/training/examples`` with the row's ``journal_id`` as the
example's ``id`` (the server journals and fsyncs before its 202), then ``mark_journaled``. A
crash between the two leaves the row ``queued``; before posting anything, the loop asks the
server which of its rows it already holds (``POST /v1/training/examples/lookup``): a row the
server journaled is marked ``journaled`` instead of sent again, and one the trainer finished
(``trained``, ``skipped``, ``discarded``) is marked ``trained``. A resent id would be refused
with 409 anyway (the server keeps every accepted id across restarts), which the loop also reads
as "journaled". Replay of general text is the trainer's (``[training] replay_ratio``), mixed
into every batch on the server. The loop-vs-naive comparison is ``compare.py``.

Only one loop may run per store (a lock file ``<db>.dream-lock``). Rate: cycle starts
are at least ``3600 / cycles_per_hour`` s apart; cycles pause while ``max_queue``
accepted examples wait for the server. Memory: the novelty filter keeps at most
``novelty_window`` vectors.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from plasticity.memory import MemoryStore, MemoryStoreError

from .client import DreamHTTPError, ServerClient
from .config import DreamConfig
from .judge import AllJudges, Item, Judge, build_judge, format_notes
from .novelty import HashEmbedder, NoveltyFilter, ServerEmbedder

log = logging.getLogger("plasticity.dream")

FAULT_ENV = "PLASTICITY_DREAM_FAULT"  # testing hook: "after_submit:N" SIGKILLs itself after the Nth POST
_SENTENCE_END = re.compile(r"[.!?:;)\]`](?=\s|$)|\n")
TEMPLATE_OVERHEAD_TOKENS = 16
# the server's lookup states of an example that is in the weights or will never be (not retried)
FINISHED = ("trained", "skipped", "discarded")


class DreamError(RuntimeError):
    """A problem that stops the loop with a clear message (bad store, server, or config)."""


# ---------------------------------------------------------------- the per-store lock

class StoreLock:
    """An exclusive ``flock`` on ``<db>.dream-lock``: one dream loop per store (any process)."""

    def __init__(self, db: Path):
        self.path = Path(str(db) + ".dream-lock")
        self.fd: int | None = None

    def acquire(self) -> "StoreLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise DreamError(f"another dream loop is running on this store ({self.path}, pid {other or '?'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


# ---------------------------------------------------------------- results

@dataclass
class CycleResult:
    cycle_id: int
    candidate_id: int | None
    accepted: bool
    reason: str
    score: float | None = None
    similarity: float | None = None
    notes: tuple = ()
    scenario: str = ""
    response: str = ""
    seconds: float = 0.0


@dataclass
class LoopStats:
    cycles: int = 0
    failed_cycles: int = 0
    accepted: int = 0
    rejected: dict = field(default_factory=dict)
    submitted: int = 0
    reconciled: int = 0
    trained_marked: int = 0
    refused: dict = field(default_factory=dict)   # queue row id -> the server's reason
    last_error: str | None = None
    last_cycle_at: float | None = None


def clean_text(text: str, max_chars: int) -> str:
    """Valid Unicode, no NUL, bounded; outer whitespace stripped."""
    t = (text or "").encode("utf-8", "replace").decode("utf-8", "replace").replace("\x00", "")
    return t.strip()[:max_chars].strip()


def trim_truncated(text: str, keep_from: int = 0) -> str | None:
    """A response cut by max_tokens, cut back to its last sentence end after ``keep_from``
    characters (if that keeps at least a third of it); None when there is none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() > keep_from]
    if not ends or ends[-1] < len(text) / 3:
        return None
    return text[:ends[-1]].rstrip()


def _fault_after_submit() -> int | None:
    v = os.environ.get(FAULT_ENV, "")
    if v.startswith("after_submit:"):
        try:
            return int(v.split(":", 1)[1])
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------- the loop

class DreamLoop:
    """One dream loop over one store and one server. Not thread-safe: one caller at a time
    (the :class:`~plasticity.dream.runner.DreamRunner` thread, or the CLI)."""

    def __init__(self, store: MemoryStore, client: ServerClient | None, cfg: DreamConfig, *,
                 judge: Judge | None = None, embedder=None, submit: bool = True, lock: bool = True, clock=time.monotonic, sleep=None):
        self.store, self.client, self.cfg = store, client, cfg
        self.judge = judge if judge is not None else build_judge(cfg, client)
        if not isinstance(self.judge, AllJudges):
            self.judge = AllJudges([self.judge])
        if embedder is None:
            embedder = ServerEmbedder(client) if (cfg.embedding == "server" and client is not None) else HashEmbedder()
        self.embedder = embedder
        self.submit_enabled = submit
        seed = cfg.seed if cfg.seed >= 0 else random.SystemRandom().randrange(2**62)
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock
        self.stats = LoopStats()
        self.center = None
        self.novelty = NoveltyFilter(cfg.novelty_threshold, cfg.novelty_window,
                                     lexical_threshold=cfg.lexical_threshold)
        self._lock = StoreLock(store.path) if lock else None
        self._prepared = False
        self._next_start = 0.0
        self._id_mode: bool | None = None        # does the server keep our ids?
        self._posts = 0
        self._no_lookup = False                  # the server has no lookup route (an older plugin)
        if cfg.replay_ratio > 0:
            log.warning("plasticity dream: [dream] replay_ratio is ignored: the server's trainer mixes general-text "
                        "replay into every batch ([training] replay_ratio and replay_source)")
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: self._stop.wait(s))

    # ---- lifecycle ----
    def prepare(self) -> None:
        """Lock the store, check notes and server, close stale cycles, rebuild the novelty set,
        reconcile the train queue with the server. Raises DreamError with a clear message."""
        if self._prepared:
            return
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        self._prepared = True

    def _prepare(self) -> None:
        n = self.store.count_notes()
        if n < self.cfg.walk_length:
            raise DreamError(f"{self.store.path}: the memory store has {n} note(s); a dream cycle needs at least "
                             f"walk_length = {self.cfg.walk_length} (plasticity memory import FILE)")
        past = self.store.cycles()
        for c in past:
            if c["status"] == "running":  # left by a crash: we hold the lock, nobody else owns it
                self.store.finish_cycle(c["id"], "failed")
        # reproducible for a given seed and store, but a restart does not replay the same walks
        self.rng = random.Random(f"{self.seed}:{len(past)}")
        notes = self._all_notes()
        if self.embedder is not None:
            if isinstance(self.embedder, ServerEmbedder):
                import numpy as np

                sample = notes if len(notes) <= 512 else random.Random(0).sample(notes, 512)
                try:
                    vecs = self.embedder.embed([x.text for x in sample])
                except DreamHTTPError as e:
                    hint = " (the server needs [training] enabled = true for /v1/training/embed)" if e.status == 404 else ""
                    raise DreamError(f"cannot embed with the served model: {e}{hint}") from None
                # anisotropy: centre on the notes' mean embedding (see novelty.py)
                self.center = np.mean(np.asarray(vecs, dtype=np.float64), axis=0)
                self.novelty.center = self.center
            acc = self.store.candidates(accepted=True)[-self.cfg.novelty_window:]
            if acc:
                texts = [self._text(c.scenario, c.response) for c in acc]
                try:
                    for t, v in zip(texts, self.embedder.embed(texts)):
                        self.novelty.add(t, v)
                except DreamHTTPError as e:
                    raise DreamError(f"cannot embed the accepted set: {e}") from None
        if self.submit_enabled:
            self.sync()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        self._prepared = False

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self):
        self.prepare()
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- helpers ----
    def _all_notes(self):
        out, off = [], 0
        while True:
            page = self.store.list_notes(limit=1000, offset=off)
            out += page
            if len(page) < 1000:
                return out
            off += 1000

    @staticmethod
    def _text(scenario: str, response: str) -> str:
        return f"{scenario}\n{response}"

    def _req_seed(self) -> int:
        return self.rng.randrange(2**31)

    def _generate(self, notes_text: list[str]) -> tuple[str, str, str]:
        """(scenario, response, reason): reason is "" or why nothing usable came back."""
        cfg, mx = self.cfg, self.store.max_text_chars
        prompt = cfg.scenario_prompt.replace("{notes}", format_notes(notes_text))
        text, _, stok = self.client.chat([{"role": "user", "content": prompt}], temperature=cfg.temperature,
                                      max_tokens=cfg.scenario_max_tokens, top_p=cfg.top_p, seed=self._req_seed(),
                                      xargs=cfg.vllm_xargs or None, timeout=cfg.timeout_s)
        scenario = clean_text(text, mx)
        if not scenario:
            return "", "", "empty_scenario"
        msgs = []
        if cfg.response_system.strip():
            msgs.append({"role": "system", "content": cfg.response_system.replace("{notes}", format_notes(notes_text))})
        msgs.append({"role": "user", "content": scenario})
        prefix = cfg.response_prefix
        if prefix:
            msgs.append({"role": "assistant", "content": prefix})
        text, finish, ntok = self.client.chat(msgs, temperature=cfg.temperature, max_tokens=cfg.response_max_tokens,
                                              top_p=cfg.top_p, seed=self._req_seed(), xargs=cfg.vllm_xargs or None,
                                              continue_final=bool(prefix), timeout=cfg.timeout_s)
        text = (text or "").encode("utf-8", "replace").decode("utf-8", "replace").replace("\x00", "")
        full = (prefix + text) if prefix else text
        if finish == "length":
            cut = trim_truncated(full, len(prefix))
            if cut is None:
                return scenario, clean_text(full, mx) or "<empty>", "truncated"
            full = cut
        response = clean_text(full, mx)
        if not response or response == prefix.strip():
            return scenario, response or "<empty>", "empty_response"
        tr = self.cfg.training
        dec = ntok + len(prefix.encode()) + 1  # prefix: at most one token per byte; + EOS
        if tr is not None and (dec > getattr(tr, "max_decision_tokens", 10**9) or dec + stok
                               + TEMPLATE_OVERHEAD_TOKENS > getattr(tr, "max_example_tokens", 10**9)):
            return scenario, response, "too_long"
        return scenario, response, ""

    # ---- one cycle ----
    def run_cycle(self) -> CycleResult:
        """One dream: walk, generate, judge, novelty, store (and queue when accepted)."""
        if not self._prepared:
            self.prepare()
        t0 = time.monotonic()
        cid = self.store.start_cycle(self.cfg.to_json())
        try:
            res = self._cycle(cid, t0)
        except BaseException as e:
            try:
                self.store.finish_cycle(cid, "failed")
            except MemoryStoreError:
                pass
            self.stats.failed_cycles += 1
            if isinstance(e, (DreamHTTPError, MemoryStoreError)):
                self.stats.last_error = f"cycle {cid}: {e}"
                log.warning("plasticity dream: cycle %d failed: %s", cid, e)
                return CycleResult(cid, None, False, "generation_error" if isinstance(e, DreamHTTPError) else "store_error",
                                   seconds=time.monotonic() - t0)
            raise
        self.store.finish_cycle(cid, "done")
        self.stats.cycles += 1
        self.stats.last_cycle_at = time.time()
        if res.accepted:
            self.stats.accepted += 1
        else:
            self.stats.rejected[res.reason] = self.stats.rejected.get(res.reason, 0) + 1
        return res

    def _cycle(self, cid: int, t0: float) -> CycleResult:
        notes = self.store.random_walk(self.rng, self.cfg.walk_length)
        texts = [n.text for n in notes]
        ids = [n.id for n in notes]
        scenario, response, reason = self._generate(texts)
        if reason == "empty_scenario":
            scenario, response = "<empty>", "<none>"
        score = sim = None
        detail = ""
        if not reason:
            v = self.judge.judge(Item(tuple(texts), scenario, response))
            score, detail = v.score, v.detail
            if v.reason:
                reason = v.reason
            elif v.score is None or v.score < self.cfg.accept_threshold:
                reason = "low_score"
        text = self._text(scenario, response)
        vec = None
        if not reason:
            try:
                vec = self.embedder.embed([text])[0]
                reason, sim = self.novelty.check(text, vec)
            except (DreamHTTPError, ValueError) as e:
                reason, detail = "embed_error", f"{detail}; {e}"[:500]
        accepted = not reason
        note = reason if reason else "accepted"
        if score is not None:
            note += f"; score {score:g}"
        if sim is not None:
            note += f"; max similarity {sim:.3f}"
        if detail:
            note += f"; {detail}"
        cand = self.store.add_candidate(cid, ids, scenario, response, score, accepted, note[:2000],
                                        context=[{"role": "user", "content": scenario}], decision=response)
        if accepted:
            self.novelty.add(text, vec)
        return CycleResult(cid, cand.id, accepted, reason or "accepted", score, sim, tuple(ids), scenario, response,
                           time.monotonic() - t0)

    # ---- submission (exactly once) ----
    def reconcile(self) -> dict:
        """Ask the server which of our ``queued`` and ``journaled`` rows it holds: journaled ones
        move to ``journaled``, finished ones to ``trained``. No-op without a client, or against a
        server without the lookup route (then a resent row is refused with 409, see
        :meth:`_submit_one_by_one`)."""
        none = {"journaled": 0, "trained": 0}
        if self.client is None or self._no_lookup:
            return none
        rows = self.store.queue("queued") + self.store.queue("journaled")
        if not rows:
            return none
        try:
            states = self.client.lookup([r.journal_id for r in rows])
        except DreamHTTPError as e:
            if e.kind == "http" and e.status in (404, 405):
                self._no_lookup = True
                log.warning("plasticity dream: the server has no POST /v1/training/examples/lookup; queue rows are "
                            "reconciled only through 409 answers")
            else:
                self.stats.last_error = f"lookup: {e}"
                log.warning("plasticity dream: lookup failed, will retry: %s", e)
            return none
        journaled = [r.journal_id for r in rows if r.state == "queued" and states.get(r.journal_id, "unknown") != "unknown"]
        trained = [r.journal_id for r in rows if states.get(r.journal_id) in FINISHED]
        out = self.store.reconcile_queue(journaled_ids=journaled, trained_ids=trained)
        self.stats.reconciled += out["journaled"]
        self.stats.trained_marked += out["trained"]
        return out

    def _example(self, row) -> dict:
        return {"context": row.context, "decision": row.decision, "id": row.journal_id}

    def submit_pending(self) -> int:
        """POST every ``queued`` row (after reconciling with the server); returns how many were sent.
        Server unreachable → rows stay queued for the next call; a row the server refuses (400/413)
        is reported in ``stats.refused`` and not retried in this process."""
        if not self.submit_enabled or self.client is None:
            return 0
        self.reconcile()
        rows = [r for r in self.store.queue("queued") if r.id not in self.stats.refused]
        sent = 0
        bs = self.cfg.submit_batch
        fault = _fault_after_submit()
        for i in range(0, len(rows), bs):
            batch = rows[i:i + bs]
            try:
                ids = self.client.submit([self._example(r) for r in batch])
            except DreamHTTPError as e:
                if e.kind == "http" and e.status in (400, 409, 413, 422):
                    sent += self._submit_one_by_one(batch)
                    continue
                self.stats.last_error = f"submit: {e}"
                log.warning("plasticity dream: submit failed, will retry: %s", e)
                return sent
            self._after_post(fault)
            self._id_mode = all(a == b.journal_id for a, b in zip(ids, batch))
            self.store.mark_journaled([r.id for r in batch])
            sent += len(batch)
            self.stats.submitted += len(batch)
        return sent

    def _submit_one_by_one(self, batch) -> int:
        sent = 0
        fault = _fault_after_submit()
        for r in batch:
            try:
                self.client.submit([self._example(r)])
            except DreamHTTPError as e:
                if e.kind == "http" and e.status == 409:
                    # the server journaled this id before (our bookkeeping was lost in a crash)
                    self.store.mark_journaled([r.id])
                    self.stats.reconciled += 1
                    continue
                if e.kind == "http" and e.status in (400, 413, 422):
                    self.stats.refused[r.id] = str(e)[:300]
                    log.warning("plasticity dream: the server refused queue row %d (%s): %s", r.id, r.journal_id, e)
                    continue
                self.stats.last_error = f"submit: {e}"
                return sent
            self._after_post(fault)
            self.store.mark_journaled([r.id])
            sent += 1
            self.stats.submitted += 1
        return sent

    def _after_post(self, fault: int | None) -> None:
        self._posts += 1
        if fault is not None and self._posts >= fault:
            os.kill(os.getpid(), signal.SIGKILL)  # testing hook: die between the 202 and mark_journaled

    def sync(self) -> dict:
        """Submit pending rows and pick up trained ids."""
        sent = self.submit_pending()
        return {"submitted": sent, **self.reconcile()}

    # ---- running ----
    def wait_turn(self) -> bool:
        """Sleep until the next cycle may start (rate bound); False when stopped."""
        now = self.clock()
        if self._next_start > now:
            if self._sleep(self._next_start - now) or self._stop.is_set():
                return False
        self._next_start = max(self.clock(), self._next_start) + self.cfg.min_interval_s
        return not self._stop.is_set()

    def run(self, cycles: int | None = None, *, on_cycle=None, respect_schedule: bool = False) -> list[CycleResult]:
        """Run ``cycles`` cycles (None: until stopped), rate-bounded, submitting after each."""
        self.prepare()
        out: list[CycleResult] = []
        while cycles is None or len(out) < cycles:
            if self._stop.is_set():
                break
            if respect_schedule and self.cfg.schedule == "sleep":
                lt = time.localtime()
                if not self.cfg.in_window(lt.tm_hour, lt.tm_min):
                    self._safe_sync()
                    if self._sleep(30.0):
                        break
                    continue
            if self.store.queue_counts()["queued"] >= self.cfg.max_queue:
                self._safe_sync()
                if self.store.queue_counts()["queued"] >= self.cfg.max_queue:
                    if self._sleep(5.0):
                        break
                    continue
            if not self.wait_turn():
                break
            res = self.run_cycle()
            out.append(res)
            if on_cycle is not None:
                on_cycle(res)
            if res.accepted:
                self._safe_sync()
        self._safe_sync()
        return out

    def _safe_sync(self) -> None:
        try:
            self.sync()
        except (DreamHTTPError, MemoryStoreError, OSError) as e:
            self.stats.last_error = f"sync: {e}"
            log.warning("plasticity dream: sync failed: %s", e)

    # ---- the naive baseline ----
    def naive_sample(self, rng: random.Random) -> dict:
        """Same generation as a cycle, from ONE random note, no walk, no judge, no novelty."""
        if getattr(self, "_notes_cache", None) is None:
            self._notes_cache = self._all_notes()
        note = rng.choice(self._notes_cache)
        scenario, response, reason = self._generate([note.text])
        return {"notes": (note.id,), "scenario": scenario or "<empty>", "response": response or "<empty>",
                "reason": reason}
