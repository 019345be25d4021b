"""How long this worker spins for vLLM's next RPC (``[training] rpc_spin_ms``).

vLLM's multiprocess worker waits for RPCs on a shared-memory queue. After each one it
busy-waits (``sched_yield`` in Python) for a second before it sleeps on a socket
(``shm_broadcast.SpinCondition``, ``busy_loop_s = 1``, no option). In a server that trains,
anything that asks for the training status more often than once a second (our own
``/metrics`` refresh every 2 s, a dashboard, a benchmark) keeps that loop spinning, and on
2 cores the spinning thread took a core from the training thread: the same steps ran 25–30%
slower in an idle server than offline. vLLM offers no option for it, so the readers'
spin time is set on the instances, once, from the first training RPC (the queue exists by
then: vLLM builds it after loading the model).

The spin must not be zero. vLLM's reader loses the socket wake-up of an RPC written right after
its last read and only finds it at its 5 s recheck; serving's decode steps arrive exactly so,
back to back. With no spin a qwen3-tiny training server took 20-45 s for 24 tokens (0.17 s with
vLLM's spin), and 24 of 60 back-to-back round trips on vLLM's queue took 5 s. A few milliseconds
of spin catch every such RPC (none of 60 at 2 ms), so the default is 20 ms and the config refuses
less than 2 (``MIN_RPC_SPIN_MS``): each status poll then costs the worker ~20 ms of spinning.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("vllm.plasticity.training")


def set_rpc_spin(seconds: float) -> int:
    """Give every RPC-queue reader of this process ``seconds`` of spinning; returns how many.
    0 when vLLM has no such class (another version): then nothing changes."""
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:
        return 0
    readers = [o for o in gc.get_objects() if type(o) is SpinCondition and getattr(o, "is_reader", False)]
    for r in readers:
        if hasattr(r, "busy_loop_s"):
            r.busy_loop_s = seconds
    log.info("plasticity: vLLM's RPC readers in this worker spin %.3f s after an RPC (%d readers)",
             seconds, len(readers))
    return len(readers)
