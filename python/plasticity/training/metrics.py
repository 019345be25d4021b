"""Prometheus metrics of online training on vLLM's ``/metrics``.

vLLM serves ``/metrics`` from prometheus_client (multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set, which vLLM does itself), so metrics made
here in the API-server process appear there. They are refreshed from the
worker's status by a background task and by every ``/v1/training/status``.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("vllm.plasticity.training")


class TrainingMetrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge

        kw = {"multiprocess_mode": "mostrecent"}
        self.step = Gauge("plasticity_training_step", "Optimizer steps taken by online training", **kw)
        self.loss = Gauge("plasticity_training_loss", "Last training loss", **kw)
        self.ppl = Gauge("plasticity_heldout_perplexity", "Latest held-out perplexity of the live weights", **kw)
        self.paused = Gauge("plasticity_training_paused", "1 when online training is paused", **kw)
        self.queued = Gauge("plasticity_training_examples_queued", "Examples waiting to be trained", **kw)
        self.trips = Counter("plasticity_guard_rollbacks", "Forgetting-guard trips (pause + rollback)")
        self._trips_seen = 0

    def update(self, st: dict) -> bool:
        """Set the gauges from a status; True when the guard tripped since the last update."""
        self.step.set(st.get("step") or 0)
        if st.get("last_loss") is not None:
            self.loss.set(st["last_loss"])
        if st.get("heldout_ppl") is not None:
            self.ppl.set(st["heldout_ppl"])
        self.paused.set(1 if st.get("paused") else 0)
        self.queued.set(st.get("examples_queued") or 0)
        trips = (st.get("guard") or {}).get("trips", 0)
        if trips > self._trips_seen:
            self.trips.inc(trips - self._trips_seen)
            self._trips_seen = trips
            return True
        return False

    async def poll(self, fetch, every_s: float = 2.0, on_trip=None) -> None:
        """Update every ``every_s``; ``on_trip()`` (a coroutine function) after a guard rollback."""
        while True:
            try:
                if self.update(await fetch()) and on_trip is not None:
                    await on_trip()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - metrics must never take the server down
                log.debug("plasticity: metrics poll failed: %s", e)
            await asyncio.sleep(every_s)
