"""``LiveApollo``: Apollo stepping the live weights in place under the forward lock, with an undo
record so a step that turns out non-finite is rolled back whole."""

from __future__ import annotations

import logging
import threading
import time

import torch

from plasticity.optim import Apollo

log = logging.getLogger("vllm.plasticity.training")

class LiveApollo(Apollo):
    """Apollo in fused mode, for parameters that are views of served weights.

    Updates are taken under ``lock`` (the serving forward holds the same lock),
    so a forward never sees a half-written tensor. Gradients are gathered as
    backward produces them and stepped in batches of about ``lock_batch_bytes``
    (a layer or so), one lock acquisition per batch: every acquisition waits for
    the forward in flight, so one per parameter cost a busy server ~1 s a step.

    A step is all or nothing: once one parameter's gradient is non-finite, it
    and every later one are skipped, and with ``atomic`` the parameters already
    stepped in that backward are put back (weights and optimizer state
    bit-identical to before the step) from an undo log of their old values,
    kept only until the backward ends. A backward that raises is put back too.

    Use: ``begin()``; ``loss.backward()``; ``flush()``; ``end(completed)``."""

    def __init__(self, params, lock: threading.Lock, *, atomic: bool = True, lock_batch_bytes: int = 16 << 20,
                 **kw):
        self.lock = lock
        self.atomic = atomic
        self.lock_batch_bytes = int(lock_batch_bytes)
        self.poisoned = False
        self.updated = 0
        self.rolled_back = 0
        self.undo_bytes_peak = 0
        self.lock_acquisitions = 0  # cumulative
        self._pending: list[tuple[torch.Tensor, dict]] = []  # gradients ready, not yet stepped
        self._pending_bytes = 0
        self._undo: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
        self._undo_bytes = 0
        self.times = {"apollo": 0.0, "undo": 0.0, "lock_wait": 0.0}  # seconds, cumulative
        super().__init__(params, fused=True, **kw)

    def begin(self) -> None:
        """Call before each backward."""
        self.poisoned = False
        self.updated = 0
        self.rolled_back = 0
        self._pending, self._pending_bytes = [], 0
        self._undo, self._undo_bytes = [], 0

    def flush(self) -> None:
        """Step the gradients still gathered: call once backward has returned."""
        self._flush()

    def end(self, completed: bool = True) -> None:
        """Call after each backward (in a ``finally``): the step stands if it ``completed`` (backward and
        ``flush`` returned), else what it stepped is put back (atomic). Frees gradients and the undo log."""
        try:
            if not completed and self.atomic and self._undo:
                self._roll_back()
        finally:
            for p, _ in self._pending:
                p.grad = None
            self._pending, self._pending_bytes = [], 0
            self._undo, self._undo_bytes = [], 0

    def _install_hooks(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(
                        lambda param, group=group: self._gather(param, group)))

    def _gather(self, p, group) -> None:
        if self.poisoned:
            p.grad = None  # the step is off: later gradients are dropped as they come
            return
        self._pending.append((p, group))
        self._pending_bytes += p.grad.numel() * p.grad.element_size()
        if self._pending_bytes >= self.lock_batch_bytes:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            with self.lock:
                self.lock_acquisitions += 1
                self.times["lock_wait"] += time.perf_counter() - t0
                for p, group in batch:
                    if self.poisoned:
                        break
                    self._step_one(p, group)
        finally:
            for p, _ in batch:
                p.grad = None
        if self.poisoned:
            self._roll_back()

    def _step_one(self, p, group) -> None:
        """One parameter, the lock held."""
        before = self.skipped
        t1 = time.perf_counter()
        if self.atomic:
            old = p.detach().clone()
            self._undo.append((p, old, _copy_state(self.state[p])))
            self._undo_bytes += old.numel() * old.element_size()
            self.undo_bytes_peak = max(self.undo_bytes_peak, self._undo_bytes)
        t2 = time.perf_counter()
        super()._step_param(p, group)
        self.times["undo"] += t2 - t1
        self.times["apollo"] += time.perf_counter() - t2
        if self.skipped != before:
            self.poisoned = True
        else:
            self.updated += 1

    @torch.no_grad()
    def _roll_back(self) -> None:
        with self.lock:
            for p, old, state in reversed(self._undo):
                p.copy_(old)
                self.state[p] = state
        # the poisoned one itself never stepped (its entry restores an unchanged tensor)
        self.rolled_back = max(len(self._undo) - (1 if self.poisoned else 0), 0)
        if self.atomic:
            self.updated = 0
        self._undo, self._undo_bytes = [], 0


def _copy_state(state: dict) -> dict:
    # Moments are updated in place by the Rust step: copy them; the rest are plain values.
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class ShardedLiveApollo(Apollo):
    """Apollo on one tensor-parallel rank's shards of served weights (see ``Apollo.shard``), with
    ``LiveApollo``'s interface: ``begin()``; ``loss.backward()``; ``flush()``; ``end(completed)``.

    Its step sums over the ranks, so it must never run under the serving lock: a rank holding the
    lock inside a sum waits for the other rank, whose step waits for that rank's lock, held by a
    serving forward that waits in vLLM's own all-reduce for the first rank's forward, which waits
    for the first rank's lock. So the step runs on copies of the shards, outside the lock, and the
    lock is held only to copy the results in: all or nothing by construction (a step with a
    non-finite gradient on any rank copies nothing in and puts the optimizer state back).

    The ranks copy in at slightly different moments: a serving step that falls between them reads
    one rank's shards of step k and another's of step k - 1."""

    def __init__(self, params, lock: threading.Lock, *, atomic: bool = True, **kw):
        super().__init__(params, fused=False, **kw)
        self.lock, self.atomic = lock, atomic
        self.poisoned = False
        self.updated = self.rolled_back = 0
        self.undo_bytes_peak = 0  # here: the copies the step runs on
        self.lock_acquisitions = 0
        self.lock_batch_bytes = 0  # no batches: the gradients are all kept until flush
        self.times = {"apollo": 0.0, "undo": 0.0, "lock_wait": 0.0}

    def begin(self) -> None:
        self.poisoned = False
        self.updated = self.rolled_back = 0

    @torch.no_grad()
    def flush(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        t0 = time.perf_counter()
        live = [p.data for p in params]
        saved = {p: _copy_state(self.state[p]) for p in params} if self.atomic else {}
        for p in params:
            p.data = p.data.clone()
        self.undo_bytes_peak = max(self.undo_bytes_peak, sum(p.numel() * p.element_size() for p in params))
        t1 = time.perf_counter()
        before = self.skipped
        try:
            try:
                self.step()
            except BaseException:
                self.poisoned = True
                raise
            finally:
                self.poisoned = self.poisoned or self.skipped != before
                if self.poisoned and self.atomic:
                    for p in params:
                        self.state[p] = saved[p]
            t2 = time.perf_counter()
            if not self.poisoned:
                with self.lock:
                    self.lock_acquisitions += 1
                    self.times["lock_wait"] += time.perf_counter() - t2
                    for p, w in zip(params, live):
                        w.copy_(p.data)
                self.updated = len(params)
        finally:
            for p, w in zip(params, live):
                p.data = w
        self.times["undo"] += t1 - t0
        self.times["apollo"] += time.perf_counter() - t1

    def end(self, completed: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None
