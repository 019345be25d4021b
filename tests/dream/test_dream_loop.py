"""The dream loop without vLLM: judges against stand-in HTTP servers (timeouts, garbage), the
novelty filter, diversity metrics on hand-made sets, the loop against a fake OpenAI-compatible
plasticity server (journal + done journal like the real one), exactly-once across a crash
between the journal write and the store's bookkeeping, the rate bound, the runner thread."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from plasticity.dream import config as dc
from plasticity.dream import metrics
from plasticity.dream.client import ServerClient
from plasticity.dream.judge import (AllJudges, EndpointJudge, Item, RubricJudge, RuleJudge, Verdict, parse_score,
                                    repeat_share)
from plasticity.dream.compare import compare
from plasticity.dream.loop import DreamError, trim_truncated
from plasticity.dream.novelty import HashEmbedder, NoveltyFilter
from plasticity.dream.runner import DreamRunner
from plasticity.dream.status import status_dict
from plasticity.memory import MemoryStore, sample_graph_path

from dream_support import FakeOpenAI, FakeTok, ServerTokens, make_cfg, make_loop, token_key


@pytest.fixture
def fake(tmp_path):
    f = FakeOpenAI(tmp_path)
    yield f
    f.close()


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "mem.sqlite")
    s.import_jsonl(sample_graph_path())
    yield s
    s.close()


# ---------------------------------------------------------------- config

def test_config_defaults_and_file(tmp_path):
    cfg = dc.load(None)
    assert cfg.judge == ("rubric",) and cfg.schedule == "continuous" and cfg.min_interval_s == 60.0
    p = tmp_path / "plasticity.toml"
    p.write_text('[training]\nenabled = true\njournal = "j.jsonl"\nreplay_source = "r.txt"\n'
                 '[dream]\ndb = "m.sqlite"\njudge = ["rule", "rubric"]\nschedule = "sleep"\n'
                 'sleep_window = "22:30-06:00"\ncycles_per_hour = 12\n[dream.rule]\nmust_match = ["short"]\n'
                 '[dream.vllm_xargs]\nsteer = "calm"\nsteer_scale = 4.0\n')
    cfg = dc.load(p)
    assert cfg.db == tmp_path / "m.sqlite" and cfg.judge == ("rule", "rubric") and cfg.min_interval_s == 300.0
    assert cfg.training.journal == tmp_path / "j.jsonl" and cfg.replay_source == tmp_path / "r.txt"
    assert cfg.rule.must_match == ("short",) and cfg.vllm_xargs == {"steer": "calm", "steer_scale": 4.0}
    assert cfg.in_window(23, 0) and cfg.in_window(5, 59) and not cfg.in_window(6, 0) and not cfg.in_window(12, 0)


# ---------------------------------------------------------------- judges

@pytest.mark.parametrize("text,score", [("7", 7.0), ("7/10", 7.0), ("Score: 8.5", 8.5), ("**9** - good", 9.0),
                                        ("4 out of 5", 8.0), ("10", 10.0), ("rating = 3", 3.0), ("0", 0.0),
                                        ("The answer is fine. Score: 6", 6.0)])
def test_parse_score_reads_common_forms(text, score):
    assert parse_score(text) == pytest.approx(score)


@pytest.mark.parametrize("text", ["", "   ", "I think seven", "11", "2023 was a year", "-3", "nan", "7/0",
                                  "12/10", "\x00\x01", "Score: banana"])
def test_parse_score_refuses_garbage(text):
    from plasticity.dream.judge import GarbageAnswer

    with pytest.raises(GarbageAnswer):
        parse_score(text)


ITEM = Item(("A for statement iterates over the items of an iterable.", "break leaves the loop."),
            "How does break change a for loop over a list?", "break leaves the for loop at once; the else is skipped.")


def test_rubric_judge_scores_garbage_timeout_and_errors(fake):
    client = ServerClient(fake.url, timeout=2.0)
    j = RubricJudge(client, dc.RubricConfig(), {"steer": "x"})
    v = j.judge(ITEM)
    assert v == Verdict(8.0, "", "8")
    sent = fake.calls[-1][1]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 8 and sent["vllm_xargs"] == {"steer": "x"}
    assert ITEM.scenario in sent["messages"][0]["content"] and ITEM.notes[1] in sent["messages"][0]["content"]
    fake.judge_answer = "Sure! Here is my review of the example"
    v = j.judge(ITEM)
    assert v.score is None and v.reason == "judge_garbage" and "Sure!" in v.detail
    fake.judge_answer = "42"
    assert j.judge(ITEM).reason == "judge_garbage"
    fake.judge_answer = "8"
    fake.delay["/v1/chat/completions#judge"] = 3.0
    t0 = time.time()
    v = RubricJudge(ServerClient(fake.url, timeout=0.5), dc.RubricConfig()).judge(ITEM)
    assert v.reason == "judge_timeout" and v.score is None and time.time() - t0 < 2.5
    del fake.delay["/v1/chat/completions#judge"]
    fake.fail["/v1/chat/completions#judge"] = (500, {"error": "boom"})
    assert j.judge(ITEM).reason == "judge_error"
    fake.fail["/v1/chat/completions#judge"] = (200, b"<html>not json</html>")
    assert j.judge(ITEM).reason == "judge_garbage"
    fake.fail["/v1/chat/completions#judge"] = (200, {"choices": []})
    assert j.judge(ITEM).reason == "judge_garbage"


def test_endpoint_judge_any_openai_server(fake, monkeypatch):
    fake.key = "judge-key"
    monkeypatch.setenv("JUDGE_KEY", "judge-key")
    cfg = dc.EndpointConfig(url=fake.url + "/v1", model="", api_key_env="JUDGE_KEY", timeout_s=0.5)
    j = EndpointJudge(cfg)
    assert j.judge(ITEM).score == 8.0 and j.model == "fake-model"  # model from /v1/models
    assert EndpointJudge(dc.EndpointConfig(url=fake.url + "/v1", model="m", timeout_s=0.5)).judge(ITEM).reason \
        == "judge_error"  # 401 without the key
    fake.delay["/v1/chat/completions#judge"] = 2.0
    assert j.judge(ITEM).reason == "judge_timeout"
    del fake.delay["/v1/chat/completions#judge"]
    # nothing listening
    dead = EndpointJudge(dc.EndpointConfig(url="http://127.0.0.1:9/v1", model="m", timeout_s=0.5))
    assert dead.judge(ITEM).reason == "judge_error"


def test_rule_judge_rules():
    cfg = dc.RuleConfig(min_chars=10, max_chars=200, must_match=(r"(?i)\bbreak\b",), must_not_match=("TODO",),
                        max_repeat=0.3, min_overlap=2)
    j = RuleJudge(cfg)
    assert j.judge(ITEM).reason == "" and j.judge(ITEM).score == 10.0
    assert j.judge(Item(ITEM.notes, "short?", ITEM.response)).reason == "rule:too_short"
    assert j.judge(Item(ITEM.notes, ITEM.scenario, "x" * 300)).reason == "rule:too_long"
    assert j.judge(Item(ITEM.notes, ITEM.scenario, "continue jumps to the next loop round.")).reason == "rule:must_match"
    assert j.judge(Item(ITEM.notes, ITEM.scenario + " TODO", ITEM.response)).reason == "rule:must_not_match"
    loop = "break the loop " * 10
    assert repeat_share(loop) > 0.5
    assert j.judge(Item(ITEM.notes, ITEM.scenario, loop)).reason == "rule:repetitive"
    v = j.judge(Item(("Generators pause at yield.",), "What does break do in here?", "break stops things right now."))
    assert v.reason == "rule:off_topic" and 0 < v.score < 10


def test_all_judges_first_rejection_wins_and_bad_judges_are_rejections():
    class Fixed:
        def __init__(self, v, name="f"):
            self.v, self.name = v, name

        def judge(self, item):
            if isinstance(self.v, Exception):
                raise self.v
            return self.v

    assert AllJudges([Fixed(Verdict(9.0)), Fixed(Verdict(6.0))]).judge(ITEM).score == 6.0
    v = AllJudges([Fixed(Verdict(9.0)), Fixed(Verdict(2.0, "rule:x")), Fixed(Verdict(10.0))]).judge(ITEM)
    assert v.reason == "rule:x" and v.score == 2.0
    assert AllJudges([Fixed(RuntimeError("bug"))]).judge(ITEM).reason == "judge_error"
    assert AllJudges([Fixed("not a verdict")]).judge(ITEM).reason == "judge_garbage"
    assert AllJudges([Fixed(Verdict(float("nan")))]).judge(ITEM).reason == "judge_garbage"
    assert AllJudges([Fixed(Verdict(11.0))]).judge(ITEM).reason == "judge_garbage"


# ---------------------------------------------------------------- novelty + metrics

def test_novelty_filter_duplicates_near_duplicates_centre_and_window():
    f = NoveltyFilter(0.9, window=3)
    e = np.eye(4)
    assert f.check("a", e[0]) == ("", -1.0)
    f.add("a", e[0])
    assert f.check("A ", e[1])[0] == "duplicate"           # same normalised text
    assert f.check("b", e[0] * 3 + 0.01 * e[1])[0] == "near_duplicate"
    assert f.check("b", e[1]) == ("", 0.0)
    for i, t in enumerate("bcd"):
        f.add(t, e[i + 1])
    assert len(f) == 3 and f.check("a", e[1])[0] == "near_duplicate"
    assert f.check("a", e[0])[0] == ""                      # "a" fell out of the window
    # anisotropy: raw vectors all close to one direction; centring separates them
    base = np.ones(8) * 10
    rng = np.random.default_rng(0)
    vecs = [base + rng.normal(size=8) for _ in range(5)]
    raw = NoveltyFilter(0.9)
    raw.add("x", vecs[0])
    assert raw.check("y", vecs[1])[0] == "near_duplicate"
    centred = NoveltyFilter(0.9, center=np.mean(vecs, 0))
    centred.add("x", vecs[0])
    assert centred.check("y", vecs[1])[0] == ""
    with pytest.raises(ValueError):
        centred.check("z", np.ones(3))
    with pytest.raises(ValueError):
        NoveltyFilter(0.0)
    # lexical: a candidate whose bigrams are mostly in the accepted set already; the window evicts exactly
    lex = NoveltyFilter(0.99, window=2, lexical_threshold=0.6)
    lex.add("the for loop walks the list", e[0])
    assert lex.lexical_overlap("the for loop walks the list again") == pytest.approx(5 / 6)
    assert lex.check("the for loop walks the list again", e[1])[0] == "lexical_duplicate"
    assert lex.check("a while loop waits for a flag", e[1])[0] == ""
    lex.add("x y z", e[1])
    lex.add("p q r", e[2])  # evicts the first text and its bigrams
    assert lex.lexical_overlap("the for loop walks the list again") == 0.0 and len(lex._gram_count) == 4


def test_diversity_metrics_on_hand_made_sets():
    same = ["the cat sat on the mat"] * 4
    varied = ["the cat sat on the mat", "a dog ran in a park", "birds sing at dawn daily", "fish swim near reefs"]
    assert metrics.distinct_n(same, 1) == pytest.approx(5 / 24)
    assert metrics.distinct_n(varied, 2) == 1.0
    assert metrics.distinct_n(same, 3) == pytest.approx(4 / 16)
    assert metrics.distinct_n([], 2) == 0.0 and metrics.distinct_n(["one"], 2) == 0.0
    e = np.eye(3)
    assert metrics.embedding_spread([e[0], e[0]]) == pytest.approx(0.0)
    assert metrics.embedding_spread([e[0], e[1], e[2]]) == pytest.approx(1.0)
    assert metrics.embedding_spread([e[0], -e[0]]) == pytest.approx(2.0)
    assert metrics.embedding_spread([e[0]]) == 0.0
    # centring: vectors near a common offset look alike raw, spread out once centred
    c = np.array([10.0, 10.0, 10.0])
    assert metrics.embedding_spread([c + e[0], c + e[1]]) < 0.01
    assert metrics.embedding_spread([c + e[0], c + e[1]], center=c) == pytest.approx(1.0)
    d = metrics.diversity(varied, HashEmbedder().embed(varied))
    assert d["n"] == 4 and d["distinct_1"] > metrics.diversity(same)["distinct_1"] and d["embedding_spread"] > 0.5
    sm = metrics.size_matched(same + varied, k=2, trials=20)
    assert sm["n"] == 2 and 0 < sm["distinct_2"] <= 1
    # token-matched: the same number of n-grams from each side
    tm = metrics.token_matched(same, {1: 6, 2: 5})
    assert tm["distinct_1"] == pytest.approx(5 / 6) and tm["distinct_2"] == 1.0 and tm["ngrams_1"] == 6
    assert metrics.token_matched(same, {1: 10**6})["distinct_1"] == pytest.approx(5 / 24)


def test_trim_truncated():
    assert trim_truncated("In short: a loop ends. Then the next thi", 9) == "In short: a loop ends."
    assert trim_truncated("In short: no end in sight at all", 9) is None
    assert trim_truncated("Line one and two\nline three", 0) == "Line one and two"  # a newline ends too
    assert trim_truncated("ab. " + "x" * 100, 0) is None   # would keep less than a third


# ---------------------------------------------------------------- the loop against the fake server

def test_cycles_store_judge_queue_and_submit(store, fake):
    loop = make_loop(store, fake)
    with loop:
        res = loop.run(6)
    assert len(res) == 6 and all(r.accepted for r in res), [r.reason for r in res]
    kinds = [re.sub(r"#.*", "", p) for p, _ in fake.calls]
    assert kinds.count("/v1/chat/completions") == 18  # scenario, response, judge per cycle
    scen_req = [b for p, b in fake.calls if p == "/v1/chat/completions"][0]
    assert scen_req["temperature"] == 0.9 and scen_req["max_tokens"] == 64 and "seed" in scen_req
    cands = store.candidates()
    assert len(cands) == 6 and all(c.accepted and c.queue_state == "journaled" for c in cands)
    assert all(len(c.memory_ids) == 3 for c in cands) and all("score 8" in c.reason for c in cands)
    recs = fake.journal_records()
    assert len(recs) == 6
    # the example sent: chat context (the scenario only) → decision (the response)
    ex = [json.loads(l) for b in fake.posts() for l in b.splitlines()][0]
    assert ex["context"] == [{"role": "user", "content": cands[0].scenario}] and ex["decision"] == cands[0].response
    assert ex["id"] == store.journal_id(cands[0].id)
    assert fake.train() == 6
    loop.sync()
    assert store.queue_counts() == {"queued": 0, "journaled": 0, "trained": 6}
    st = status_dict(store.path)
    assert st["cycles"]["done"] == 6 and st["generated"] == 6 and st["accepted"] == 6 and st["accept_rate"] == 1.0
    assert st["queue"]["trained"] == 6 and st["diversity"]["n"] == 6 and st["diversity"]["distinct_2"] > 0.5


def test_rejections_are_recorded_and_never_queued(store, fake):
    answers = iter(["3", "banana", "9", "9"])
    fake.judge_answer = lambda body: next(answers)
    gen_n = {"i": 0}

    def gen(kind, body, n):  # the 4th cycle repeats the 3rd exactly → duplicate
        if kind == "scenario":
            gen_n["i"] += 1
            return ("How does a for loop use the iterator protocol here?" if gen_n["i"] >= 3
                    else f"Distinct question number {gen_n['i']} about loops and iterators?"), "stop"
        return ("In short: the loop calls next until StopIteration." if gen_n["i"] >= 3
                else f"Answer {gen_n['i']}: iterators drive loops."), "stop"

    fake.gen = gen
    with make_loop(store, fake) as loop:
        res = loop.run(4)
    assert [r.reason for r in res] == ["low_score", "judge_garbage", "accepted", "duplicate"]
    cands = store.candidates()
    assert [c.accepted for c in cands] == [False, False, True, False]
    assert cands[1].score is None and "banana" in cands[1].reason
    assert store.queue_counts()["queued"] == 0 and len(fake.journal_records()) == 1
    st = status_dict(store.path)
    assert st["rejected_by_reason"] == {"low_score": 1, "judge_garbage": 1, "duplicate": 1}


def test_generation_failures_fail_the_cycle_not_the_loop(store, fake):
    fake.fail["/v1/chat/completions#response"] = (503, {"error": "overloaded"})
    with make_loop(store, fake) as loop:
        res = loop.run(2)
        assert [r.reason for r in res] == ["generation_error"] * 2 and loop.stats.failed_cycles == 2
        del fake.fail["/v1/chat/completions#response"]
        fake.gen = lambda kind, body, n: ("", "stop") if kind == "scenario" else ("x", "stop")
        assert loop.run(1)[0].reason == "empty_scenario"
        fake.gen = lambda kind, body, n: (("Why?" * 5, "stop") if kind == "scenario" else ("no sentence end at all", "length"))
        assert loop.run(1)[0].reason == "truncated"
    st = status_dict(store.path)
    assert st["cycles"]["failed"] == 2 and st["cycles"]["done"] == 2 and st["accepted"] == 0
    assert store.queue_counts() == {"queued": 0, "journaled": 0, "trained": 0}


def test_response_prefix_prefills_the_answer(store, fake):
    cfg = make_cfg(fake, response_prefix="In short:", response_system="")
    with make_loop(store, fake, cfg) as loop:
        r = loop.run(1)[0]
    assert r.accepted and r.response.startswith("In short: the ")
    req = [b for p, b in fake.calls if p == "/v1/chat/completions"][1]
    assert req["continue_final_message"] is True and req["add_generation_prompt"] is False
    assert req["messages"][-1] == {"role": "assistant", "content": "In short:"} and len(req["messages"]) == 2


class Crash(Exception):
    pass


def _crash_after_post(monkeypatch, store):
    """The next mark_journaled raises: the POST went through (journaled, fsync'd) but the store
    still says 'queued' — a crash between the journal write and the bookkeeping."""
    real = store.mark_journaled
    state = {"armed": True}

    def boom(ids):
        if state["armed"]:
            state["armed"] = False
            raise Crash("killed after the 202")
        return real(ids)

    monkeypatch.setattr(store, "mark_journaled", boom)


def _journaled_once_by_content(fake, store, acc) -> None:
    """Every accepted candidate is in the server's journal exactly once, by its token ids, under
    its own id; and nothing else is there."""
    recs = fake.journal_records()
    tok = ServerTokens(FakeTok())
    want = [tok.key([{"role": "user", "content": c.scenario}], c.response) for c in acc]
    assert sorted(token_key(r["context"], r["decision"]) for r in recs) == sorted(want)
    assert sorted(r["id"] for r in recs) == sorted(store.journal_id(c.id) for c in acc)


def test_exactly_once_across_a_crash_between_journal_write_and_mark(tmp_path, fake, monkeypatch):
    db = tmp_path / "mem.sqlite"
    s1 = MemoryStore(db)
    s1.import_jsonl(sample_graph_path())
    loop = make_loop(s1, fake)
    loop.prepare()
    loop.run(2)
    _crash_after_post(monkeypatch, s1)
    with pytest.raises(Crash):
        loop.run(1)
    assert s1.queue_counts() == {"queued": 1, "journaled": 2, "trained": 0}
    assert len(fake.journal_records()) == 3  # the crashed one is in the journal
    fake.train()  # the server trains everything it journaled, meanwhile
    loop.close()
    s1.close()
    # restart: a new process opens the store afresh and asks the server about its rows
    s2 = MemoryStore(db)
    posts_before = len(fake.posts())
    loop2 = make_loop(s2, fake)
    loop2.prepare()  # reconciles: the crashed row is journaled and trained, so it is not re-sent
    assert len(fake.posts()) == posts_before
    assert len(fake.posts("/v1/training/examples/lookup")) >= 1
    assert s2.queue_counts() == {"queued": 0, "journaled": 0, "trained": 3}
    loop2.run(2)
    fake.train()
    loop2.sync()
    loop2.close()
    acc = s2.candidates(accepted=True)
    assert len(acc) == 5 and s2.queue_counts() == {"queued": 0, "journaled": 0, "trained": 5}
    _journaled_once_by_content(fake, s2, acc)
    done = [json.loads(l)["id"] for l in fake.done.read_text().splitlines()]
    assert len(done) == len(set(done)) == 5  # and trained exactly once
    s2.close()


def test_without_the_lookup_route_a_resent_row_is_refused_and_journaled_once(tmp_path, fake, monkeypatch):
    """An older plugin without the lookup route: after the crash the row is sent again, the server
    refuses its id with 409, and the loop takes that as "journaled"; the journal holds it once."""
    fake.lookup = False
    db = tmp_path / "mem.sqlite"
    s1 = MemoryStore(db)
    s1.import_jsonl(sample_graph_path())
    loop = make_loop(s1, fake)
    loop.prepare()
    _crash_after_post(monkeypatch, s1)
    with pytest.raises(Crash):
        loop.run(1)
    loop.close()
    s1.close()
    s2 = MemoryStore(db)
    with make_loop(s2, fake) as loop2:
        loop2.run(1)
        assert loop2.stats.reconciled == 1  # the 409
    recs = fake.journal_records()
    assert len(recs) == 2 and len({r["id"] for r in recs}) == 2
    assert s2.queue_counts() == {"queued": 0, "journaled": 2, "trained": 0}
    fake.train()
    done = [json.loads(l)["id"] for l in fake.done.read_text().splitlines()]
    assert sorted(done) == sorted(r["id"] for r in recs)
    s2.close()


def test_lookup_states_move_rows_forward_only(store, fake):
    """A skipped or discarded example is finished (``trained`` in the store, never resent); a
    failed one stays ``journaled``; the lookup is sent in batches of at most 1000 ids."""
    from plasticity.training.core import Journal

    with make_loop(store, fake) as loop:
        loop.run(4)
        ids = [r.journal_id for r in store.queue("journaled")]
        Journal(fake.done).append([{"id": ids[0], "step": 1, "status": "skipped"},
                                   {"id": ids[1], "step": 1, "status": "discarded"},
                                   {"id": ids[2], "step": 1, "status": "failed"}])
        assert loop.reconcile() == {"journaled": 0, "trained": 2}
        assert [r.journal_id for r in store.queue("journaled")] == ids[2:]
        assert loop.client.lookup(["x-%d" % i for i in range(2500)]) == {"x-%d" % i: "unknown" for i in range(2500)}
    sizes = [len(b["ids"]) for b in fake.posts("/v1/training/examples/lookup")]
    assert sizes[-3:] == [1000, 1000, 500]


def test_refused_example_does_not_block_the_queue(store, fake):
    fake.gen = lambda kind, body, n: ((f"Question {n} about for loops and break?", "stop") if kind == "scenario"
                                      else (("HUGE answer." if n == 5 else f"Answer {n}: break ends loops."), "stop"))
    fake.refuse_decision = "HUGE"
    cfg = make_cfg(fake, submit_batch=8)
    loop = make_loop(store, fake, cfg, submit=False)
    with loop:
        loop.run(3)
        loop.submit_enabled = True
        assert loop.submit_pending() == 2  # the batch was refused (413), then sent one by one
    assert len(loop.stats.refused) == 1 and "413" in next(iter(loop.stats.refused.values()))
    assert store.queue_counts() == {"queued": 1, "journaled": 2, "trained": 0}


def test_server_down_keeps_rows_queued_until_it_answers(store, fake):
    with make_loop(store, fake) as loop:
        fake.fail["/v1/training/examples"] = (503, {"error": "restarting"})
        loop.run(2)
        assert store.queue_counts()["queued"] == 2 and "503" in loop.stats.last_error
        del fake.fail["/v1/training/examples"]
        loop.sync()
    assert store.queue_counts() == {"queued": 0, "journaled": 2, "trained": 0}


def test_rate_bound_and_queue_bound(store, fake):
    clock = {"t": 0.0}
    sleeps = []

    def sleep(s):
        sleeps.append(round(s, 3))
        clock["t"] += s
        return False

    cfg = make_cfg(fake, cycles_per_hour=3600.0)
    with make_loop(store, fake, cfg, clock=lambda: clock["t"], sleep=sleep) as loop:
        starts = []
        loop.run(4, on_cycle=lambda r: starts.append(clock["t"]))
    assert starts == [0.0, 1.0, 2.0, 3.0] and sleeps == [1.0, 1.0, 1.0]
    # queue bound: with the server refusing everything, cycles stop once max_queue rows wait
    fake.fail["/v1/training/examples"] = (503, {"error": "down"})
    cfg = make_cfg(fake, max_queue=2)
    calls = {"n": 0}

    def sleep2(s):
        calls["n"] += 1
        if calls["n"] > 3:
            loop2.stop()
            return True
        return False

    loop2 = make_loop(store, fake, cfg, sleep=sleep2)
    with loop2:
        loop2.run(10)
    assert store.queue_counts()["queued"] == 2  # two cycles, then it waited instead of generating


def test_one_loop_per_store(store, fake):
    with make_loop(store, fake):
        with pytest.raises(DreamError, match="another dream loop is running"):
            make_loop(store, fake).prepare()
    with make_loop(store, fake):
        pass  # released


def test_too_few_notes_and_no_training_routes_are_clear_errors(tmp_path, fake):
    s = MemoryStore(tmp_path / "two.sqlite")
    s.add_note("one note")
    s.add_note("another note")
    with pytest.raises(DreamError, match=r"has 2 note\(s\); a dream cycle needs at least walk_length = 3"):
        make_loop(s, fake).prepare()
    s.add_note("third")
    fake.fail["/v1/training/embed"] = (404, {"error": "online training is disabled"})
    with pytest.raises(DreamError, match=r"needs \[training\] enabled"):
        make_loop(s, fake).prepare()
    s.close()


def test_stale_running_cycle_is_closed_on_start(store, fake):
    cid = store.start_cycle({"x": 1})  # a crash mid-cycle leaves this
    with make_loop(store, fake):
        pass
    assert [c["status"] for c in store.cycles() if c["id"] == cid] == ["failed"]


def test_novelty_set_is_rebuilt_after_restart(tmp_path, fake):
    db = tmp_path / "m.sqlite"
    s = MemoryStore(db)
    s.import_jsonl(sample_graph_path())
    fake.gen = lambda kind, body, n: (("The same question about loops, every time?", "stop") if kind == "scenario"
                                      else ("The same answer about loops.", "stop"))
    with make_loop(s, fake) as loop:
        assert [r.reason for r in loop.run(2)] == ["accepted", "duplicate"]
    with make_loop(s, fake) as loop:
        assert len(loop.novelty) == 1 and loop.run(1)[0].reason == "duplicate"
    s.close()


def test_dream_replay_ratio_is_left_to_the_trainer(store, fake, tmp_path, caplog):
    """Replay of general text is mixed by the server's trainer ([training] replay_ratio); the loop
    submits only its dream examples and says once that [dream] replay_ratio is ignored."""
    src = tmp_path / "general.txt"
    src.write_text("\n<|endoftext|>\n".join(f"Document {i}. " + "Some general text about Python. " * 20
                                             for i in range(3)))
    cfg = make_cfg(fake, replay_ratio=0.5, replay_source=str(src))
    with caplog.at_level("WARNING", logger="plasticity.dream"):
        with make_loop(store, fake, cfg) as loop:
            loop.run(4)
    posts = [json.loads(l) for b in fake.posts() for l in b.splitlines()]
    assert len(posts) == 4 and all(e["id"].startswith("mem-") for e in posts)
    assert sum("replay_ratio is ignored" in r.message for r in caplog.records) == 1
    assert store.queue_counts()["journaled"] == 4


def test_compare_reports_both_sides(store, fake):
    # naive sampling gets the same few notes' words back; the loop's walks combine several notes
    with make_loop(store, fake) as loop:
        rep = compare(loop, 6, seed=3)
    assert rep["loop"]["cycles"] == 6 and rep["loop"]["accepted"] == 6 and rep["naive"]["n"] == 6
    for side in ("loop", "naive", "naive_size_matched"):
        assert 0 <= rep[side]["distinct_2"] <= 1 and "embedding_spread" in rep[side]
    assert 0 < rep["naive_token_matched"]["distinct_2"] <= 1


# ---------------------------------------------------------------- the runner and the CLI

def test_runner_runs_in_the_background_and_stops_cleanly(tmp_path, fake):
    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.import_jsonl(sample_graph_path())
    cfg = make_cfg(fake, db=str(db), max_cycles=3, enabled=True)
    r = DreamRunner(cfg, fake.url).start()
    r.thread.join(30)
    st = r.status()
    assert st["state"] == "finished" and st["cycles_this_run"] == 3 and st["accepted_this_run"] == 3
    assert status_dict(db, r)["runner"]["cycles_this_run"] == 3
    # an unbounded run, slowed down: stop() ends it between cycles, nothing left running
    fake.delay["/v1/chat/completions#response"] = 0.3
    cfg2 = make_cfg(fake, db=str(db), enabled=True)
    r2 = DreamRunner(cfg2, fake.url).start()
    t0 = time.time()
    while r2.cycles < 2 and time.time() - t0 < 30:
        time.sleep(0.05)
    assert r2.stop(10) and r2.status()["state"] == "stopped"
    st = status_dict(db)
    assert st["cycles"]["running"] == 0 and st["queue"]["queued"] == 0
    # a setup error is reported, retried, never raised
    r3 = DreamRunner(make_cfg(fake, db=str(tmp_path / "missing" / "x.sqlite")), fake.url, retry_s=0.1).start()
    t0 = time.time()
    while not r3.last_error and time.time() - t0 < 10:
        time.sleep(0.05)
    assert "does not exist" in r3.last_error and r3.stop(5)


def test_status_route_reads_the_store(tmp_path, fake, monkeypatch):
    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient

    from plasticity.dream import server as dream_server

    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.import_jsonl(sample_graph_path())
        with make_loop(s, fake) as loop:
            loop.run(2)
    cfgp = tmp_path / "p.toml"
    cfgp.write_text(f'[dream]\ndb = "{db}"\n')
    monkeypatch.setenv("PLASTICITY_CONFIG", str(cfgp))
    monkeypatch.setattr(dream_server, "_CFG", None)
    monkeypatch.setattr(dream_server, "_CFG_ERROR", None)
    import hashlib

    plugin = types.SimpleNamespace(tokens=[hashlib.sha256(b"k").digest()])
    r = APIRouter()
    dream_server.attach(r, plugin)
    app = FastAPI()
    app.include_router(r)
    c = TestClient(app)
    assert c.get("/v1/dream/status").status_code == 401
    got = c.get("/v1/dream/status", headers={"Authorization": "Bearer k"}).json()
    assert got["configured"] and got["cycles"]["done"] == 2 and got["accepted"] == 2
    monkeypatch.setattr(dream_server, "_CFG", dc.DreamConfig())
    assert c.get("/v1/dream/status", headers={"Authorization": "Bearer k"}).status_code == 404


def _cli(*argv):
    from plasticity.dream.cli import main

    return main(list(argv))


def test_cli_cycles_status_candidates(tmp_path, fake, capsys):
    db = tmp_path / "m.sqlite"
    cfgp = tmp_path / "p.toml"
    cfgp.write_text(f'[training]\nenabled = true\njournal = "{fake.journal}"\n'
                    f'[dream]\ndb = "{db}"\njudge = "rubric"\ncycles_per_hour = 360000\nseed = 4\n')
    assert _cli("--config", str(cfgp), "--server", fake.url, "--import", str(sample_graph_path()),
                "--cycles", "3", "--json") == 0
    out = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(out) == 4 and out[-1]["summary"]["accepted"] == 3 and out[-1]["summary"]["queue"]["journaled"] == 3
    fake.train()
    assert _cli("--config", str(cfgp), "--server", fake.url, "--cycles", "0", "--wait-trained", "5") == 0
    capsys.readouterr()
    assert _cli("status", "--config", str(cfgp), "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["queue"] == {"queued": 0, "journaled": 0, "trained": 3} and st["cycles"]["done"] == 3
    assert _cli("status", "--config", str(cfgp)) == 0
    assert "3 generated, 3 accepted (100%)" in capsys.readouterr().out
    assert _cli("candidates", "--config", str(cfgp), "--accepted", "--json") == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["queue_state"] == "trained" for r in rows)


def test_sigkill_mid_run_then_restart_exactly_once(tmp_path, fake):
    """The loop as a process, SIGKILLed right after a POST was journaled (before its bookkeeping),
    restarted: every accepted candidate is journaled and trained exactly once."""
    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.import_jsonl(sample_graph_path())
    cfgp = tmp_path / "p.toml"
    cfgp.write_text(f'[training]\nenabled = true\njournal = "{fake.journal}"\n'
                    f'[dream]\ndb = "{db}"\njudge = "rubric"\ncycles_per_hour = 360000\nseed = 5\n')
    env = {**os.environ, "PLASTICITY_DREAM_FAULT": "after_submit:2"}
    cmd = [sys.executable, "-m", "plasticity.dream.cli", "--config", str(cfgp), "--server", fake.url]
    p = subprocess.run(cmd + ["--cycles", "4"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    with MemoryStore(db) as s:
        assert s.queue_counts()["queued"] == 1 and len(fake.journal_records()) == 2
    fake.train()
    posts = len(fake.posts())
    p = subprocess.run(cmd + ["--cycles", "2", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # the restarted process learnt from the lookup route that the crashed row is journaled (and
    # trained): it POSTed only its two new cycles' examples
    assert len(fake.posts()) == posts + 2
    fake.train()
    with MemoryStore(db) as s:
        with make_loop(s, fake) as loop:
            loop.sync()
        acc = s.candidates(accepted=True)
        assert len(acc) == 4 and s.queue_counts() == {"queued": 0, "journaled": 0, "trained": 4}
        _journaled_once_by_content(fake, s, acc)
        ids = [r["id"] for r in fake.journal_records()]
    done = [json.loads(l)["id"] for l in fake.done.read_text().splitlines()]
    assert sorted(done) == sorted(ids)


def test_server_init_state_starts_the_background_loop(tmp_path, fake, monkeypatch):
    """What training_routes' init_state will call: starts the runner against the server's own URL."""
    import asyncio

    from plasticity.dream import server as dream_server

    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.import_jsonl(sample_graph_path())
    cfgp = tmp_path / "p.toml"
    cfgp.write_text(f'[training]\nenabled = true\njournal = "{fake.journal}"\n'
                    f'[dream]\nenabled = true\ndb = "{db}"\nmax_cycles = 2\ncycles_per_hour = 360000\n'
                    f'judge = "rubric"\nseed = 3\n')
    monkeypatch.setenv("PLASTICITY_CONFIG", str(cfgp))
    monkeypatch.setattr(dream_server, "_CFG", None)
    monkeypatch.setattr(dream_server, "_CFG_ERROR", None)
    monkeypatch.setattr(dream_server, "_RUNNER", None)
    port = int(fake.url.rsplit(":", 1)[1])
    plugin = types.SimpleNamespace(cfg=types.SimpleNamespace(enabled=True), tok=FakeTok(), tokens=[])
    args = types.SimpleNamespace(host="0.0.0.0", port=port, api_key=None)
    asyncio.run(dream_server.init_state(plugin, object(), args))
    runner = dream_server._RUNNER
    assert runner is not None and runner.client.url == f"http://127.0.0.1:{port}"
    runner.thread.join(30)
    st = dream_server.status_dict()
    assert st["runner"]["state"] == "finished" and st["cycles"]["done"] == 2 and st["enabled"]
    assert dream_server.stop()
    # training disabled: the loop is not started
    monkeypatch.setattr(dream_server, "_RUNNER", None)
    plugin.cfg.enabled = False
    asyncio.run(dream_server.init_state(plugin, object(), args))
    assert dream_server._RUNNER is None
