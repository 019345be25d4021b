"""Apollo under tensor parallelism: each rank steps its shard of a matrix in a real gloo process
group (two processes), and the shards equal the whole matrix stepped unsharded, after one step and
after 50 (5 projection refreshes, the norm-growth limiter firing), for column- and row-parallel
blocks of tall, wide and square matrices. The pure-math version with 2 and 3 ranks is in
rust/plasticity-core/src/apollo/sharded/tests.rs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    procs = [subprocess.Popen([sys.executable, str(HERE / "apollo_shard_worker.py"), str(r), str(WORLD),
                               str(tmp / "init"), str(tmp / f"rank{r}.json")]) for r in range(WORLD)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _case(results, name):
    err = math.sqrt(sum(r[name]["err2"] for r in results) / sum(r[name]["upd2"] for r in results))
    return err, results[0][name]


@pytest.mark.parametrize("name", ["tall_rows_one_step", "tall_cols_one_step"])
def test_one_sharded_step_equals_the_whole_step(results, name):
    err, _ = _case(results, name)
    assert err <= 1e-5, err


@pytest.mark.parametrize("name", ["tall_rows", "tall_cols", "wide_rows", "wide_cols", "square_rows_mini"])
def test_fifty_sharded_steps_stay_exact(results, name):
    err, r0 = _case(results, name)
    print(f"\n{name}: relative error of the update after 50 steps {err:.2e}")
    assert r0["limiter_fired"], "the limiter never fired: the case would not cover it"
    assert all(r[name]["same_limiter"] for r in results)
    assert err <= 1e-5, err


def test_communication_per_step(results):
    # channels split (tall rows, wide cols): a flag and four f64 totals = 40 bytes;
    # d split (tall cols, wide rows): R (channels × 8, f32) and each channel's ‖G‖² (f64)
    per = {n: results[0][n]["bytes_per_step"] for n in ("tall_rows", "tall_cols", "wide_rows", "wide_cols")}
    print("\nAPOLLO TP=2 BYTES PER STEP PER RANK", per)
    assert per["tall_rows"] == 40 and per["wide_cols"] == 40
    assert per["tall_cols"] == 96 * 8 * 4 + 96 * 8
    assert per["wide_rows"] == 96 * 8 * 4 + 96 * 8
