"""The examples queue between the routes (through the worker's RPC) and the training thread.

A plain ``queue.Queue``: both ends are Python threads in the worker and the items are Python
dicts, so a native channel (it used to be a crossbeam channel in the Rust extension) only added
two crossings of the binding per example and did no work of its own.
"""

from __future__ import annotations

import math
import queue


class ExampleQueue:
    """Bounded; ``push`` never waits (a full queue is reported to the caller, never waited on
    inside vLLM's RPC loop); ``pop`` waits up to ``timeout`` seconds."""

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("the examples queue's capacity must be an integer ≥ 1")
        self.capacity = capacity
        self._q: queue.Queue = queue.Queue(maxsize=capacity)

    def push(self, item) -> bool:
        """Enqueue without blocking; False when the queue is full."""
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            return False

    def pop(self, timeout: float | None = None):
        """The next item, or None after ``timeout`` seconds (None: wait for one)."""
        if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError("timeout must be finite and ≥ 0")
        try:
            if timeout is None:
                return self._q.get()
            return self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return None

    def drain(self) -> list:
        """Everything queued now, without waiting."""
        out = []
        while (item := self.pop(0.0)) is not None:
            out.append(item)
        return out

    def __len__(self) -> int:
        return self._q.qsize()
