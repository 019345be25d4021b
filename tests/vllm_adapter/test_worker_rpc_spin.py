"""``[training] rpc_spin_ms``: vLLM's worker stops busy-waiting for RPCs after one.

The measurement behind it (docs/results/training.md): an idle SmolLM2 server polled for its
status trained 25-30% slower than the same steps offline, because vLLM's worker spun for a
second after every RPC and took one of the two cores."""

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


def test_the_default_is_no_spin():
    from plasticity.training import config as tc

    assert tc.from_dict({"enabled": True}).rpc_spin_ms == 0.0
