"""``plasticity serve`` on vLLM CPU with ``--tensor-parallel-size``: the thread binding and the
executor that vLLM CPU needs are added unless the user gave them."""

from __future__ import annotations

import pytest

from plasticity.serve import cpu_tensor_parallel, tensor_parallel_size


@pytest.mark.parametrize("args,size", [
    ([], 1), (["--tensor-parallel-size", "2"], 2), (["-tp", "4"], 4), (["--tensor-parallel-size=2"], 2),
    (["--tensor-parallel-size", "x"], 1), (["--tensor-parallel-size"], 1),
])
def test_size_is_read_from_vllms_arguments(args, size):
    assert tensor_parallel_size(["--dtype", "float32", *args]) == size


@pytest.mark.parametrize("cpus,tp,bind", [
    ([0, 1], 2, "0|1"), ([0, 1, 2, 3], 2, "0,1|2,3"), ([4, 5, 6, 7, 8], 2, "4,5|6,7"), ([3, 1], 2, "1|3"),
])
def test_binding_cuts_the_allowed_cpus_into_one_group_per_rank(cpus, tp, bind):
    env = {}
    assert cpu_tensor_parallel(env, ["--tensor-parallel-size", str(tp)], cpus) == \
        ["--distributed-executor-backend", "mp"]
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == bind


def test_what_the_user_gave_is_kept():
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}
    assert cpu_tensor_parallel(env, ["-tp", "2", "--distributed-executor-backend", "ray"], [0, 1]) == []
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"
    env = {}
    assert cpu_tensor_parallel(env, ["-tp", "1"], [0, 1]) == [] and env == {}


def test_more_ranks_than_cpus_is_a_clear_error():
    with pytest.raises(SystemExit, match="needs at least 4 CPUs"):
        cpu_tensor_parallel({}, ["--tensor-parallel-size", "4"], [0, 1])
