"""The main job on the real model, in CI: SmolLM2-135M-Instruct served by `plasticity serve` (real
vLLM, real HTTP), driven by the very functions of scripts/demo.py, with a shorter training.

One server for the whole file (SmolLM2 takes ~3 minutes to start on 2 cores): steering a mood
extracted on the server, teaching a fact while a client is answered, then snapshot, rollback to
the base (bit-identical replies) and forward. The demo's full-length numbers are in
docs/results/training.md; here the training is cut to what CI can afford, and the assertions are the
ones that length is measured to meet (see EPOCHS)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from models import model_dir

pytestmark = pytest.mark.vllm

ROOT = pathlib.Path(__file__).resolve().parents[2]
# 4 passes, each over the 8 training paraphrases and 4 rehearsed answers (scripts/demo.py ANCHOR_Q),
# = 24 steps of 2 (+ 2 replay). Measured four times (recipe f22edde9f58a; a server without a client,
# and this test): held-out paraphrases 0/4 -> 4/4, general questions kept 8/8; without the rehearsal 6/8.
EPOCHS = 4


def _demo():
    spec = importlib.util.spec_from_file_location("plasticity_demo", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo():
    return _demo()


@pytest.fixture(scope="module")
def smol_server(vllm_servers, tmp_path_factory, demo):
    vllm_servers.close()  # one server at a time on 2 cores
    work = tmp_path_factory.mktemp("smollm2")
    srv = demo.PlasticityServer(model_dir("smollm2-135m-instruct"), demo.write_config(work))
    srv.log_path = work / "server.log"
    srv.start()
    print(f"\nSmolLM2 healthy after {srv.startup_seconds:.0f} s, log {srv.log_path}")
    srv.served = demo.call(srv, "/v1/models", method="GET")["data"][0]["id"]
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def results():
    return {}


def test_served_model_answers_like_smollm2(smol_server, demo):
    reply = demo.chat(smol_server, smol_server.served, "What is the capital of France?")
    assert "Paris" in reply, reply


def test_mood_steering_both_ways_and_nothing_leaks(smol_server, demo):
    out = demo.steering(smol_server, smol_server.served)
    for q, (off, up, down) in out["replies"].items():
        assert up != off and down != off and up != down, (q, off, up, down)
    first_off = out["replies"][demo.STEER_PROMPTS[0]][0]
    assert out["again"] == first_off  # the unsteered reply after steered requests: bit-identical


def test_dream_yes_no_judge_ranks_answers_on_smollm2(smol_server, demo):
    """The dream loop's rubric judge on this model (``[dream.rubric] score = "yes_no"``): asked
    through the served model's own logprobs, every correct hand-written answer scores above every
    wrong one. Before any training (the base weights). Offline the scores were 2.01-2.39 against
    1.18-1.95 (docs/dream.md); the dream e2e on this model is tests/dream/test_dream_real_model.py."""
    import dream_serving_support as dss
    from plasticity.dream import config as dc
    from plasticity.dream.client import ServerClient
    from plasticity.dream.judge import RubricJudge

    judge = RubricJudge(ServerClient(smol_server.url, demo.KEY, timeout=60),
                        dc.from_dict({"rubric": {"score": "yes_no"}}).rubric)
    scores = dss.judge_scores(judge)
    print("\nSMOLLM2 YES/NO JUDGE", scores)
    assert None not in scores["good"] + scores["bad"], scores
    assert min(scores["good"]) > max(scores["bad"]), scores


@pytest.mark.slow
def test_teach_a_fact_while_serving(smol_server, demo, results):
    # the demo's client pace (a question every 6 s, demo.CLIENT_EVERY_S); the figures asserted below
    # depend on the training data and order, not on that pace
    res = demo.training(smol_server, smol_server.served, epochs=EPOCHS)
    results["training"] = res
    print("\nSMOLLM2 TRAINING", {k: v for k, v in res.items() if k not in ("fact", "general", "status")})
    st = res["status"]
    assert res["fact_hits_before"] == 0
    assert res["steps"] >= EPOCHS * len(demo.TRAIN_Q) // 2 and st["skipped_steps"] == 0 and st["failed_steps"] == 0
    assert res["requests_served"] > 0
    assert res["fact_hits"] >= 3, res  # measured 4/4 (EPOCHS)
    # measured 8/8 with the rehearsal in every run so far (four at 4 passes, one at 6; 6/8 without it)
    assert res["general_kept"] >= res["general_ok_before"] - 1, res
    assert res["ppl_after"] < res["ppl_before"] * 1.05, res


def test_snapshot_rollback_is_bit_identical_and_forward_restores(smol_server, demo, results):
    if "training" not in results:
        pytest.skip("needs the trained weights of test_teach_a_fact_while_serving")
    base = results["training"]
    out = demo.version_control(smol_server, smol_server.served, base)
    assert out["snapshot"]["exact_roundtrip"] is True
    assert out["rollback_identical"] is True
    hits = sum(bool(re.search(demo.FACT_KEY, r)) for r in out["forward_fact"])
    assert hits == base["fact_hits"], (hits, base["fact_hits"])
