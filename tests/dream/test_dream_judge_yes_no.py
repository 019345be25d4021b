"""``[dream.rubric] score = "yes_no"``: the judge's score from the first answer token's P(yes) and
P(no), for models too small to answer a rubric with a number (SmolLM2-135M: see docs/dream.md)."""

from __future__ import annotations

import math

import pytest

from plasticity.dream import config as dc
from plasticity.dream.judge import EndpointJudge, GarbageAnswer, Item, RubricJudge, yes_no_score
from plasticity.dream.client import ServerClient
from plasticity.memory import MemoryStore, sample_graph_path

from dream_support import FakeOpenAI, make_cfg, make_loop


def test_score_is_the_share_of_yes_summed_over_spellings():
    lp = math.log
    assert yes_no_score({"Yes": lp(0.3), " yes": lp(0.1), "No": lp(0.2), "The": lp(0.4)}) == pytest.approx(
        10 * 0.4 / 0.6)
    assert yes_no_score({"YES.": lp(0.5), " no": lp(0.5)}) == pytest.approx(5.0)
    assert yes_no_score({"no": lp(0.9)}) == 0.0 and yes_no_score({"Yes": lp(0.01)}) == 10.0
    # impossible entries are skipped, not trusted
    assert yes_no_score({"Yes": 3.0, "No": lp(0.5), "yes": float("nan")}) == 0.0
    with pytest.raises(GarbageAnswer, match="neither yes nor no"):
        yes_no_score({"Maybe": lp(0.9), "Nope": lp(0.1)})


def test_config_picks_the_yes_no_prompt_and_refuses_other_modes():
    cfg = dc.from_dict({"rubric": {"score": "yes_no"}})
    assert cfg.rubric.score == "yes_no" and cfg.rubric.prompt == dc.DEFAULT_YES_NO_PROMPT
    assert dc.from_dict({}).rubric.prompt == dc.DEFAULT_RUBRIC_PROMPT and dc.from_dict({}).rubric.score == "text"
    own = dc.from_dict({"rubric": {"score": "yes_no", "prompt": "Q {scenario} A {response}. Answer yes or no."}})
    assert own.rubric.prompt.startswith("Q ")
    assert dc.from_dict({"endpoint": {"score": "yes_no"}}).endpoint.prompt == dc.DEFAULT_YES_NO_PROMPT
    with pytest.raises(dc.DreamConfigError, match="score"):
        dc.from_dict({"rubric": {"score": "logits"}})


@pytest.fixture
def fake(tmp_path):
    f = FakeOpenAI(tmp_path)
    yield f
    f.close()


def test_rubric_judge_asks_one_token_with_top_logprobs(fake):
    fake.judge_top = {"Yes": math.log(0.3), "No": math.log(0.1), "I": math.log(0.5)}
    cfg = dc.from_dict({"rubric": {"score": "yes_no"}})
    j = RubricJudge(ServerClient(fake.url, fake.key), cfg.rubric, {"steer": "calm"})
    v = j.judge(Item(("a note",), "a question?", "an answer."))
    assert v.reason == "" and v.score == pytest.approx(7.5)
    body = [b for p, b in fake.calls if p == "/v1/chat/completions"][-1]
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 20, 0.0)
    assert body["vllm_xargs"] == {"steer": "calm"}  # steering applies to the judge as to the answers
    assert "a question?" in body["messages"][0]["content"] and "Answer yes or no" in body["messages"][0]["content"]
    e = EndpointJudge(dc.EndpointConfig(url=fake.url + "/v1", model="m", score="yes_no",
                                        prompt=dc.DEFAULT_YES_NO_PROMPT))
    assert e.judge(Item(("n",), "s", "r")).score == pytest.approx(7.5)


def test_the_loop_accepts_and_rejects_on_the_yes_share(tmp_path, fake):
    store = MemoryStore(tmp_path / "m.sqlite")
    store.import_jsonl(sample_graph_path())
    try:
        answers = iter([{"Yes": math.log(0.4), "No": math.log(0.1)},    # 8.0: accepted at 5
                        {"Yes": math.log(0.1), "No": math.log(0.4)}])   # 2.0: low score
        fake.judge_top = lambda body: next(answers)
        with make_loop(store, fake, make_cfg(fake, rubric={"score": "yes_no"}, accept_threshold=5.0)) as loop:
            res = loop.run(2)
        assert [r.accepted for r in res] == [True, False] and res[1].reason == "low_score"
        scores = sorted(c.score for c in store.candidates())
        assert scores == [pytest.approx(2.0), pytest.approx(8.0)]
        assert len(fake.posts()) == 1
    finally:
        store.close()
