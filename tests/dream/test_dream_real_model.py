"""The dream loop end to end on the real model: SmolLM2-135M-Instruct served by vLLM CPU with the
plugin, the served model itself judging every candidate through the yes/no rubric
(``[dream.rubric] score = "yes_no"``: 10 · P(yes) / (P(yes) + P(no)) of its first answer token),
and the accepted scenarios, trained by the server, moving a behavioural test (greedy replies of
held-out prompts start with the dream data's answer format) within the forgetting guard. The ten
general questions are measured before and after and reported, not gated: this data costs some of
them (docs/dream.md).

One server for the file (SmolLM2 takes ~3 minutes to start on 2 cores). Both tests are measured
claims about the model, not properties of the code: the science tier (``-m science``). What CI
keeps of this path: the yes/no judge's parsing and hostile bodies (tests/dream/, tests/attacks/),
the judge ranking answers on the served SmolLM2 (tests/demo/test_smollm2_serving.py), and the
loop's exactly-once training on qwen3-tiny (tests/dream/test_dream_serving.py).

Figures are printed (-s) and written to $PLASTICITY_BENCH_OUT/dream_smollm2.json when set.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

import dream_serving_support as dss
import training_support as ts

pytestmark = [pytest.mark.vllm, pytest.mark.science]

MODEL = "smollm2-135m-instruct"
TRAIN = int(os.environ.get("PLASTICITY_DREAM_TRAIN", "48"))  # accepted dream examples trained before the check
TRAIN_MAX = int(os.environ.get("PLASTICITY_DREAM_TRAIN_MAX", "96"))  # ... and at most, 16 more at a time
GUARD = 0.10
# SmolLM2's yes/no scores sit low and close together: offline (transformers, float32) the four correct
# answers of dss.JUDGE_ITEMS got 2.01-2.39 and the four wrong ones 1.18-1.95 (docs/dream.md), so the
# default threshold of 6 would accept nothing and 2.0 is where they part.
ACCEPT = 2.0
REPORT: dict = {}


_report = dss.reporter(REPORT, "dream smollm2", "dream_smollm2.json")


@pytest.fixture(scope="module")
def smol_dream(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    root = tmp_path_factory.mktemp("dream-smollm2")
    # the demo's training settings on this model (scripts/demo.py: lr 1e-4, Apollo rank 64, half replay)
    cfg = ts.write_config(root, lr=1e-4, rank=64, replay_ratio=0.5, heldout_tokens=2048, guard_every=8,
                          guard_threshold=GUARD)
    rubric = '\n[dream.rubric]\nscore = "yes_no"\n'
    cfg.write_text(cfg.read_text() + dss.dream_section(root, judge='["rule", "rubric"]', accept_threshold=ACCEPT,
                                                        extra=rubric))
    srv = _steering_server(vllm_servers, tmp_path_factory, ("dream-smollm2",), ts.plugin_env(cfg),
                           extra_args=("--api-key", ts.API_KEY), model=MODEL)
    srv.served_model_name = srv.model
    srv.root, srv.config = root, cfg
    yield srv
    vllm_servers.close()


def _general(srv) -> dict:
    """The ten general questions (eval/data/general), greedy, on the served model: as shipped (12
    tokens) and with 12 more tokens, room for an answer format in front ("In short:\n1. ...")."""
    import dataclasses

    from plasticity.eval.behaviour import load_tests, run_tests, server_generator
    from plasticity.experiments.common import GENERAL_TESTS

    gen = server_generator(srv.url, api_key=ts.API_KEY, model=srv.served_model_name)
    tests = load_tests(GENERAL_TESTS)
    res = run_tests(gen, tests)
    roomy = run_tests(gen, [dataclasses.replace(t, max_tokens=t.max_tokens + 12) for t in tests])
    return {"passed": res["passed"], "n": res["n"], "failed": [r["id"] for r in res["results"] if not r["passed"]],
            "passed_24_tokens": roomy["passed"], "outputs_24_tokens": [r["output"] for r in roomy["results"]]}


def test_yes_no_judge_ranks_answers(smol_dream):
    from plasticity.dream.client import ServerClient
    from plasticity.dream.judge import RubricJudge

    cfg, store = dss.store(smol_dream)
    store.close()
    judge = RubricJudge(ServerClient(smol_dream.url, ts.API_KEY, timeout=60), cfg.rubric)
    scores = dss.judge_scores(judge)
    _report("judge_scores", scores)
    good, bad = scores["good"], scores["bad"]
    assert min(good) > max(bad), scores
    # the threshold this file trains with sits between them for most of the correct answers
    assert sum(s >= ACCEPT for s in good) >= 3 and all(s < ACCEPT for s in bad), scores


def test_judged_dreams_move_the_behaviour_within_the_guard(smol_dream):
    srv = smol_dream
    code, out = ts.request(srv, "POST", "/v1/training/pause")
    assert code == 200, out
    st = ts.status(srv)
    before = {**dss.behaviour(srv), "heldout_ppl": st["heldout_ppl"], "general": _general(srv)}
    _report("before", before)
    code, out = ts.request(srv, "POST", "/v1/training/resume")
    assert code == 200, out
    rounds = []
    for target in range(TRAIN, TRAIN_MAX + 1, 16):
        top = dss.top_up(srv, target)
        st = ts.wait_done(srv, top["accepted_total"], timeout=900)
        b = dss.behaviour(srv)
        rounds.append({**top, "pass_rate": b["pass_rate"], "prefix_logprob": b["prefix_logprob"], "steps": st["step"]})
        _report("rounds", rounds)
        if b["pass_rate"] >= before["pass_rate"] + 0.5:
            break
    cfg, store = dss.store(srv)
    try:
        cands = store.candidates()
        reasons = Counter((c.reason or "accepted").split(";")[0].split(":")[0] for c in cands)
        accepted = [c for c in cands if c.accepted]
        _report("judged", {"candidates": len(cands), "accepted": len(accepted), "reasons": dict(reasons),
                           "accepted_scores": sorted(round(c.score, 2) for c in accepted if c.score is not None),
                           "examples": [(c.scenario[:80], c.response[:60], round(c.score or 0, 2)) for c in accepted[:4]],
                           "rejected_low": [(c.scenario[:80], c.response[:60], round(c.score or 0, 2))
                                            for c in cands if (c.reason or "").startswith("low_score")][:4]})
    finally:
        store.close()
    code, snap = ts.request(srv, "POST", "/v1/snapshots", {"name": "after-dream", "note": "dream e2e on SmolLM2"})
    assert code == 201, snap
    after = {**dss.behaviour(srv), "heldout_ppl": snap["heldout_ppl"], "general": _general(srv)}
    rel = after["heldout_ppl"] / st["heldout_ppl_initial"] - 1
    _report("after", {**after, "heldout_ppl_initial": st["heldout_ppl_initial"], "heldout_ppl_change": rel,
                      "guard": st.get("guard"), "steps": st["step"], "examples_done": st["examples_done"],
                      "wall_s": round(sum(r["wall_s"] for r in rounds), 1), "at": time.strftime("%H:%M:%S")})
    # the judge did the filtering: some candidates were turned down for their score, not only by the rules
    assert reasons["low_score"] >= 1 and len(accepted) >= TRAIN, reasons
    assert st["examples_done"] >= len(accepted) and st.get("guard", {}).get("trips", 0) == 0, st
    assert rel < GUARD, (before, after)
    # the answer format carried by the accepted dreams reached the weights
    assert after["prefix_logprob"] > before["prefix_logprob"] + 0.5, (before, after)
    assert after["pass_rate"] >= before["pass_rate"] + 0.5, (before, after)
    # Not asserted, reported: the general questions. The first run lost 6 of 10 (12 tokens) while the
    # guard's perplexity fell 15%: what this data costs is in docs/dream.md, not a property to gate.
