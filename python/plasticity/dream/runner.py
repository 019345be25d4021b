"""The dream loop in the background: a daemon thread that talks to the server over HTTP.

It runs inside the API-server process (started by ``plasticity.dream.server.init_state`` when
``[dream] enabled = true``) or in the foreground of ``plasticity dream`` without
``--cycles``. It never blocks serving: its requests are ordinary requests to the server,
one at a time, at most ``cycles_per_hour`` cycles an hour, and it sleeps in between.

- waits until the server answers (it may start before the HTTP socket is open);
- a setup error (too few notes, no training routes, another loop holding the store) is
  recorded in ``status()["last_error"]`` and retried every ``retry_s``; never raised;
- ``stop()`` sets an event checked between requests and joins the thread; an interrupted
  cycle is marked ``failed`` and its candidate is not stored (nothing half-done reaches
  the queue); queued examples are submitted on the next start.
"""

from __future__ import annotations

import logging
import threading
import time

from plasticity.memory import MemoryStore, MemoryStoreError

from .client import DreamHTTPError, ServerClient
from .config import DreamConfig
from .loop import DreamError, DreamLoop

log = logging.getLogger("plasticity.dream")


class DreamRunner:
    def __init__(self, cfg: DreamConfig, url: str, api_key: str | None = None, *, db=None,
                 retry_s: float = 30.0, loop_factory=None):
        self.cfg = cfg
        self.db = db or cfg.db
        if self.db is None:
            raise DreamError("[dream] db is not set: the dream loop needs a memory store file")
        self.client = ServerClient(url, api_key, cfg.model or None, timeout=cfg.timeout_s)
        self.retry_s = retry_s
        self.loop_factory = loop_factory
        self.loop: DreamLoop | None = None
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.state = "idle"
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.cycles = 0

    # ---- control ----
    def start(self) -> "DreamRunner":
        if self.thread is not None and self.thread.is_alive():
            return self
        self._stop.clear()
        self.started_at = time.time()
        self.thread = threading.Thread(target=self._run, name="plasticity-dream", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask the thread to stop and wait up to ``timeout`` s; True when it has stopped."""
        self._stop.set()
        if self.loop is not None:
            self.loop.stop()
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def status(self) -> dict:
        st = {"state": self.state, "schedule": self.cfg.schedule, "cycles_this_run": self.cycles,
              "started_at": self.started_at, "last_error": self.last_error,
              "cycles_per_hour": self.cfg.cycles_per_hour, "max_cycles": self.cfg.max_cycles}
        lp = self.loop
        if lp is not None:
            s = lp.stats
            st.update(accepted_this_run=s.accepted, rejected_this_run=dict(s.rejected), failed_cycles=s.failed_cycles,
                      submitted=s.submitted, reconciled=s.reconciled, refused=len(s.refused),
                      seed=lp.seed, server_keeps_ids=lp._id_mode,
                      novelty_set=len(lp.novelty), loop_error=s.last_error)
        return st

    # ---- the thread ----
    def _make_loop(self) -> DreamLoop:
        if self.loop_factory is not None:
            return self.loop_factory(self)
        store = MemoryStore(self.db)
        try:
            return DreamLoop(store, self.client, self.cfg)
        except BaseException:
            store.close()
            raise

    def _run(self) -> None:
        try:
            self._run_inner()
        except Exception as e:  # noqa: BLE001 - a background thread must never take the server down
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("plasticity dream: the background loop stopped")
        finally:
            if self.state not in ("finished",):
                self.state = "stopped"
            if self.loop is not None:
                self.loop.close()
                self.loop.store.close()

    def _run_inner(self) -> None:
        self.state = "waiting for the server"
        while not self._stop.is_set() and not self.client.health():
            self._stop.wait(1.0)
        while not self._stop.is_set():
            try:
                self.state = "preparing"
                self.loop = self._make_loop()
                self.loop.prepare()
                break
            except (DreamError, DreamHTTPError, MemoryStoreError, OSError) as e:
                self.last_error = str(e)
                log.warning("plasticity dream: cannot start (retrying in %.0f s): %s", self.retry_s, e)
                if self.loop is not None:
                    self.loop.close()
                    self.loop.store.close()
                    self.loop = None
                self.state = "retrying"
                self._stop.wait(self.retry_s)
        if self._stop.is_set():
            return
        self.state = "running"
        remaining = self.cfg.max_cycles or None

        def on_cycle(res):
            self.cycles += 1

        self.loop.run(remaining, on_cycle=on_cycle, respect_schedule=True)
        self.state = "finished" if not self._stop.is_set() else "stopped"
