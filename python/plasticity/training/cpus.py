"""Which CPUs the training thread runs on (``[training] cpus``).

vLLM's CPU worker pins itself, and so every thread it starts, to the cores it serves on (on a
2-core machine: core 0, while core 1 holds the API server and the engine core, mostly waiting).
A training thread started inside the worker inherits that mask, so it and its torch/Apollo
threads fight the serving forward for one core while another sits idle: on SmolLM2-135M the
training thread ran 4-5x slower in the server than the same code offline. The training thread
therefore sets its own affinity before it starts any worker threads:

- ``"auto"`` (default): the machine's CPUs that serving is not pinned to, or all of them if
  serving holds every one;
- ``"all"``: every CPU of the machine; ``"inherit"``: keep vLLM's mask (the old behaviour);
- a list such as ``"1"`` or ``"2-7,10"``.
"""

from __future__ import annotations

import os
import re
import threading

_LIST = re.compile(r"[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*", re.ASCII)
MAX_CPU = 1 << 16


def parse_list(text: str) -> set[int]:
    """``"0,2-3"`` → {0, 2, 3}; ValueError on anything else."""
    if not isinstance(text, str) or len(text) > 4096 or not _LIST.fullmatch(text):
        raise ValueError(f"not a CPU list like '1' or '2-7,10': {text[:40]!r}" if isinstance(text, str)
                         else f"not a CPU list: {text!r}")
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a > b or b >= MAX_CPU:
            raise ValueError(f"bad CPU range {part!r}")
        out.update(range(a, b + 1))
    return out


def check_spec(spec) -> str:
    if spec in ("auto", "all", "inherit"):
        return spec
    parse_list(spec)
    return spec


def machine_cpus() -> set[int]:
    """The CPUs this container may use (cgroup cpuset), else all the kernel reports."""
    for path in ("/sys/fs/cgroup/cpuset.cpus.effective", "/sys/fs/cgroup/cpuset/cpuset.effective_cpus"):
        try:
            text = open(path).read().strip()
            if text:
                return parse_list(text)
        except (OSError, ValueError):
            pass
    return set(range(os.cpu_count() or 1))


def choose(spec: str, serving: set[int], machine: set[int]) -> set[int] | None:
    """The CPUs for the training thread, or None to keep the inherited mask."""
    if spec == "inherit":
        return None
    if spec == "all":
        return set(machine)
    if spec == "auto":
        return (machine - serving) or set(machine)
    want = parse_list(spec)
    return want & machine or None


def pin_this_thread(spec: str) -> tuple[set[int], set[int]]:
    """Apply ``spec`` to the calling thread; returns (serving mask seen, mask now)."""
    serving = os.sched_getaffinity(0)
    target = choose(spec, serving, machine_cpus())
    if target and target != serving:
        try:
            os.sched_setaffinity(0, target)  # 0 = the calling thread only
        except OSError:
            pass  # a cpuset we cannot enter: keep what we have
    return serving, os.sched_getaffinity(0)


def check_idle_spec(spec) -> str:
    """``idle_cpus``: "same" (never widen), "all", or a CPU list."""
    if spec in ("same", "all"):
        return spec
    if spec in ("auto", "inherit"):
        raise ValueError(f"idle_cpus is 'same', 'all' or a CPU list, not {spec!r}")
    parse_list(spec)
    return spec


class TrainingCpus:
    """The training thread's CPUs: ``cpus`` while requests are being served, widened to
    ``idle_cpus`` while serving is idle (an idle server's cores are otherwise wasted: on 2 cores
    the trainer ran at about half its offline speed in an idle server).

    Every thread that computes for training moves with each switch: the training thread itself
    and the OpenMP team torch runs its intra-op work on (threads started from the training thread,
    found once as the tasks that appear when the team is first spawned); the caller restarts
    Apollo's pool from the moved thread. Built and used on the training thread only."""

    def __init__(self, spec: str, idle_spec: str, threads: int):
        self.serving = os.sched_getaffinity(0)
        machine = machine_cpus()
        self.narrow = choose(spec, self.serving, machine) or set(self.serving)
        # "inherit" promises vLLM's own mask, so it never widens either
        keep = idle_spec == "same" or spec == "inherit"
        wide = self.narrow if keep else choose(idle_spec, self.serving, machine)
        self.wide = wide or self.narrow
        self.n_narrow = max(1, min(threads, len(self.narrow)))
        self.n_wide = max(1, min(threads, len(self.wide)))
        self.team: list[int] = []
        self.is_wide: bool | None = None

    @property
    def widens(self) -> bool:
        return self.wide != self.narrow

    def spawn_team(self) -> None:
        """Start torch's OpenMP team at its largest size and remember its threads' ids."""
        import torch

        n = max(self.n_narrow, self.n_wide)
        self._pin([threading.get_native_id()], self.narrow | self.wide)
        if n < 2:
            return
        before = _tasks()
        set_torch_threads(n)
        torch.ones(1 << 22).add_(1.0)  # one parallel region with n threads
        self.team = sorted(_tasks() - before)

    def apply(self, wide: bool) -> int:
        """Move the training thread and its team; returns the thread count to use now."""
        mask, n = (self.wide, self.n_wide) if wide else (self.narrow, self.n_narrow)
        self._pin([threading.get_native_id(), *self.team], mask)
        set_torch_threads(n)
        self.is_wide = wide
        return n

    @staticmethod
    def _pin(tids: list[int], mask: set[int]) -> None:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass  # a thread that ended, or a cpuset we cannot enter: keep what it has


def set_torch_threads(n: int) -> None:
    """torch's intra-op threads for the calling thread. vLLM's CPU worker replaces
    ``torch.set_num_threads`` with a no-op after binding its own threads, so inside the server the
    public call left the trainer on one thread whatever ``threads`` said. The original,
    ``torch._C.set_num_threads``, sets the calling thread's OpenMP thread count (MKL's
    thread-locally); serving's threads keep theirs."""
    import torch

    setter = getattr(torch._C, "set_num_threads", None) or torch.set_num_threads
    setter(int(n))


def _tasks() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()
