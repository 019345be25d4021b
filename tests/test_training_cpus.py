"""The training thread's CPUs: away from the core vLLM pins serving to (see training/cpus.py)."""

from __future__ import annotations

import os
import threading

import pytest

from plasticity.training import cpus


def test_auto_takes_the_cpus_serving_does_not_hold():
    assert cpus.choose("auto", serving={0}, machine={0, 1}) == {1}
    assert cpus.choose("auto", serving={0, 1}, machine={0, 1}) == {0, 1}  # nothing free: share all
    assert cpus.choose("all", serving={0}, machine={0, 1, 2}) == {0, 1, 2}
    assert cpus.choose("inherit", serving={0}, machine={0, 1}) is None
    assert cpus.choose("1-2", serving={0}, machine={0, 1, 2, 3}) == {1, 2}
    assert cpus.choose("9", serving={0}, machine={0, 1}) is None  # not on this machine: keep the mask


def test_cpu_lists_parse_strictly():
    assert cpus.parse_list("0,2-3,7") == {0, 2, 3, 7}
    for bad in ["", " 1", "1,", "3-1", "１", "1-2-3", "a", "-1", "99999999"]:
        with pytest.raises(ValueError):
            cpus.parse_list(bad)


def test_pin_moves_only_the_calling_thread():
    before = os.sched_getaffinity(0)
    machine = cpus.machine_cpus()
    if len(machine) < 2:
        pytest.skip("needs 2 CPUs")
    one = min(before)
    os.sched_setaffinity(0, {one})  # like vLLM's worker: the parent thread pinned to one core
    try:
        seen = {}

        def child():
            seen["serving"], seen["mine"] = cpus.pin_this_thread("auto")

        t = threading.Thread(target=child)
        t.start()
        t.join()
        assert seen["serving"] == {one}
        assert seen["mine"] == machine - {one}
        assert os.sched_getaffinity(0) == {one}  # the caller's own mask is untouched
    finally:
        os.sched_setaffinity(0, before)
