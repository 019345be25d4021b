"""``[training] rpc_spin_ms``: how long vLLM's worker busy-waits for its next RPC after one.

Two measurements behind it (docs/results/training.md):
- vLLM's own spin (1 s after every RPC) kept the worker's main thread busy whenever anything polled
  the training status, and took one of the two cores from training (an idle SmolLM2 server
  trained 25-30% slower than the same steps offline);
- with no spin at all, vLLM's reader loses the wake-up of an RPC written right after its last read
  and finds it only at its 5 s recheck: serving a qwen3-tiny training server took 20-45 s for 24
  tokens instead of 0.17 s. The round-trip test below is that failure on vLLM's real queue."""

import multiprocessing as mp
import time

import pytest

shm = pytest.importorskip("vllm.distributed.device_communicators.shm_broadcast")


def _reader(busy_s: float, is_reader: bool = True):
    c = object.__new__(shm.SpinCondition)  # the real class, without its zmq sockets
    c.is_reader, c.busy_loop_s, c.last_read = is_reader, busy_s, 0.0
    return c


def test_every_reader_in_the_process_gets_the_configured_spin():
    from plasticity.vllm.rpc_spin import set_rpc_spin

    readers, writer = [_reader(1.0), _reader(1.0)], _reader(0.0, is_reader=False)
    assert set_rpc_spin(0.002) >= 2
    assert [r.busy_loop_s for r in readers] == [0.002, 0.002]
    assert writer.busy_loop_s == 0.0  # writers do not wait: left as they were


def test_the_default_spin_is_short_but_not_zero():
    from plasticity.training import config as tc

    spin = tc.from_dict({"enabled": True}).rpc_spin_ms
    assert tc.MIN_RPC_SPIN_MS <= spin <= 50  # 4 status polls a second then cost under 20% of a core


def _echo_worker(request_handle, reply_handles, spin_s):
    """The worker's side: vLLM's reader with ``spin_s`` of spinning, answering each RPC at once."""
    from plasticity.vllm.rpc_spin import set_rpc_spin

    requests = shm.MessageQueue.create_from_handle(request_handle, 0)
    replies = shm.MessageQueue(1, 1)
    reply_handles.put(replies.export_handle())
    requests.wait_until_ready()
    replies.wait_until_ready()
    set_rpc_spin(spin_s)  # as the plugin does in the worker, on every reader of the process
    while (msg := requests.dequeue(indefinite=True)) is not None:
        replies.enqueue(msg)


def _round_trips(spin_s: float, n: int = 60) -> list[float]:
    """Seconds of ``n`` RPCs sent back to back (each right after the previous answer), the way
    vLLM's engine sends decode steps to its worker."""
    ctx = mp.get_context("spawn")
    requests, reply_handles = shm.MessageQueue(1, 1), ctx.Queue()
    p = ctx.Process(target=_echo_worker, args=(requests.export_handle(), reply_handles, spin_s), daemon=True)
    p.start()
    try:
        replies = shm.MessageQueue.create_from_handle(reply_handles.get(timeout=120), 0)
        requests.wait_until_ready()
        replies.wait_until_ready()
        out = []
        for i in range(n):
            t0 = time.monotonic()
            requests.enqueue(i)
            assert replies.dequeue(timeout=30) == i
            out.append(time.monotonic() - t0)
        requests.enqueue(None)
        p.join(10)
        return out
    finally:
        if p.is_alive():
            p.kill()


@pytest.mark.parametrize("which", ["default", "minimum"])
def test_back_to_back_rpcs_never_wait_for_the_recheck(which):
    """With no spin, 24 of 60 such round trips took 5 s here (vLLM 0.32); every allowed setting
    must answer them all in milliseconds."""
    from plasticity.training import config as tc

    spin_ms = tc.from_dict({"enabled": True}).rpc_spin_ms if which == "default" else tc.MIN_RPC_SPIN_MS
    times = _round_trips(spin_ms / 1000)
    slow = [round(t, 2) for t in times if t > 1.0]
    assert not slow, f"{len(slow)} of {len(times)} back-to-back RPCs waited for vLLM's 5 s recheck: {slow}"
