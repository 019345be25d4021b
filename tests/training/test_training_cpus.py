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


def _masks(tids):
    return [os.sched_getaffinity(t) for t in tids]


def test_training_widens_to_idle_cpus_and_narrows_back_with_its_team():
    """Idle server: the trainer and every thread of its OpenMP team move to all CPUs; serving:
    back to the CPUs serving does not hold (a team left wide would compete with serving)."""
    import torch

    before = os.sched_getaffinity(0)
    machine = cpus.machine_cpus()
    if len(machine) < 2:
        pytest.skip("needs 2 CPUs")
    one = min(before)
    os.sched_setaffinity(0, {one})  # like vLLM's worker
    seen = {}

    def child():
        n0 = torch.get_num_threads()
        try:
            plan = cpus.TrainingCpus("auto", "all", threads=len(machine))
            plan.spawn_team()
            seen["team"] = list(plan.team)
            seen["wide_n"] = plan.apply(True)
            seen["wide"] = os.sched_getaffinity(0), _masks(plan.team)
            seen["narrow_n"] = plan.apply(False)
            seen["narrow"] = os.sched_getaffinity(0), _masks(plan.team)
            seen["same"] = cpus.TrainingCpus("auto", "same", threads=4).widens
            seen["inherit"] = cpus.TrainingCpus("inherit", "all", threads=4).widens
        finally:
            torch.set_num_threads(n0)

    try:
        t = threading.Thread(target=child)
        t.start()
        t.join()
    finally:
        os.sched_setaffinity(0, before)
    assert len(seen["team"]) >= 1  # the OpenMP threads started from the training thread were found
    assert seen["wide_n"] == len(machine) and seen["narrow_n"] == len(machine - {one})
    assert seen["wide"][0] == machine and all(m == machine for m in seen["wide"][1])
    assert seen["narrow"][0] == machine - {one} and all(m == machine - {one} for m in seen["narrow"][1])
    assert seen["same"] is False and seen["inherit"] is False


def test_trainer_widens_only_while_serving_is_idle(tmp_path):
    """The trainer's own thread: wide between requests, narrow within serving_idle_ms of one."""
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from models import model_dir
    from plasticity.training.queue import ExampleQueue
    from plasticity.training import config as tc, core, views

    machine = cpus.machine_cpus()
    if len(machine) < 2:
        pytest.skip("needs 2 CPUs")
    before = os.sched_getaffinity(0)
    one = min(before)
    m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    sel = views.select([n for n, _ in m.named_parameters()], ["all-linear"])
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    cfg = tc.from_dict({"enabled": True, "lr": 1e-6, "rank": 8, "journal": str(tmp_path / "j.jsonl"),
                        "replay_ratio": 0.0, "threads": 2, "serving_duty": 1.0})
    served = [None]
    n0 = torch.get_num_threads()
    os.sched_setaffinity(0, {one})  # the worker's mask, inherited by the training thread
    try:
        tr = core.Trainer(m, sorted(sel), cfg, ExampleQueue(100), threading.Lock(), last_serve=lambda: served[0])
        tr.start()
    finally:
        os.sched_setaffinity(0, before)
    try:
        def step_and_cpus(i):
            done = tr.stats["step"]
            tr.enqueue([{"id": f"e{i}", "context": [5, 6, 7], "decision": [40, 41]}])
            deadline = time.monotonic() + 60
            while tr.stats["step"] == done and time.monotonic() < deadline:
                time.sleep(0.01)
            return set(tr.stats["cpus"]), tr.stats["threads"]

        assert step_and_cpus(0) == (machine, 2)  # no request ever served: wide
        served[0] = time.monotonic() + 3600  # a request "now" for the next hour
        assert step_and_cpus(1) == (machine - {one}, min(2, len(machine) - 1))
        served[0] = time.monotonic() - 10  # idle again
        assert step_and_cpus(2) == (machine, 2)
        assert tr.stats["cpu_switches"] == 3
    finally:
        tr.stop()
        torch.set_num_threads(n0)


def test_threads_apply_although_vllm_disables_torch_set_num_threads(monkeypatch):
    """vLLM's CPU worker replaces torch.set_num_threads with a no-op; the trainer's threads must
    still take effect (they did not: the trainer ran on one thread in every server)."""
    import torch

    if len(cpus.machine_cpus()) < 2:
        pytest.skip("needs 2 CPUs")
    n0 = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # what vLLM's cpu_worker does
    seen = {}

    def child():
        torch._C.set_num_threads(1)  # the worker's own binding: OMP_NUM_THREADS=1 on a 2-core machine
        plan = cpus.TrainingCpus("all", "all", threads=2)
        plan.spawn_team()
        seen["team"], seen["n"] = plan.team, plan.apply(True)
        seen["torch"] = torch.get_num_threads()
        cpus.set_torch_threads(1)

    try:
        t = threading.Thread(target=child)
        t.start()
        t.join()
    finally:
        torch._C.set_num_threads(n0)
    assert seen["n"] == 2 and seen["torch"] == 2 and len(seen["team"]) >= 1
