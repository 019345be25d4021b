"""The trainer's view of one tensor-parallel rank (training/tensor_parallel.py): two processes in a
real gloo group each hold their shards of qwen3-tiny (cut as vLLM cuts them) and compute the
context-frozen loss of the whole model, the exact block of every gradient (Qwen3's per-head
q_norm/k_norm included), and the same 20 Apollo steps as the whole model trained alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from models import model_dir

HERE = Path(__file__).parent
WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tpv")
    procs = [subprocess.Popen([sys.executable, str(HERE / "tp_view_worker.py"), str(r), str(WORLD), str(tmp / "init"),
                               str(model_dir("qwen3-tiny")), str(tmp / f"rank{r}.json")]) for r in range(WORLD)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_sharded_loss_equals_the_whole_models(results):
    for r in results:
        whole, sharded = r["loss"]
        assert abs(whole - sharded) <= 1e-5 * abs(whole), r["loss"]


def test_every_shards_gradient_is_its_block_of_the_whole_gradient(results):
    for r in results:
        assert len(r["grad_rel_err"]) == 4 * 11 + 2  # every parameter but the tied head, norms included
        worst = max(r["grad_rel_err"], key=r["grad_rel_err"].get)
        assert r["grad_rel_err"][worst] <= 1e-5, (worst, r["grad_rel_err"][worst])


def test_twenty_sharded_apollo_steps_follow_the_whole_model(results):
    err = math.sqrt(sum(r["err2"] for r in results) / sum(r["upd2"] for r in results))
    print(f"\nTP=2 view, 20 Apollo steps: relative error of the update {err:.2e}; per rank and step "
          f"{results[0]['bytes_per_step']} bytes in the view's collectives ({results[0]['tokens']} decision tokens), "
          f"{results[0]['apollo_bytes_per_step']:.0f} in Apollo's")
    assert err <= 5e-5, err
