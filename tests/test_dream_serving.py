"""The dream loop end to end on the real vLLM CPU server (qwen3-tiny, float32, plugin, API key):

1. the loop (walk → scenario → answer → rule judge → novelty) vs naive sampling from one random
   note, the same memories, temperature and budget, with the weights held still (training
   paused): accept rate and diversity (distinct-n, embedding spread of the served model's
   centred hidden states), also size- and token-matched;
2. the loop as a process, SIGKILLed mid-cycle, then SIGKILLed again between a journaled POST
   and its bookkeeping, then restarted: every accepted candidate is in the server's journal
   exactly once and trained exactly once (checked on ``<journal>`` and ``<journal>.done``);
3. the accepted scenarios, trained by the server, move a behavioural test (the answer format
   the dream data carries) while held-out perplexity stays within the forgetting guard.

Figures are printed (-s) and written to $PLASTICITY_BENCH_OUT/dream_e2e.json when set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import training_support as ts

pytestmark = pytest.mark.vllm

K = int(os.environ.get("PLASTICITY_DREAM_K", "40"))
PREFIX = "In short:"
GUARD = 0.10
HELD = ["How does a while loop end?", "What is a generator?", "Explain the with statement.",
        "What does None mean?", "How do I define a class?", "What is a decorator?", "How do exceptions work?",
        "What is a list comprehension?", "What does import do?", "How are strings compared?",
        "What is a dict?", "How do I open a file?"]
REPORT: dict = {}


def _dream_section(root) -> str:
    return f'''
[dream]
db = "{root / 'memory.sqlite'}"
judge = "rule"
temperature = 0.9
top_p = 1.0
scenario_max_tokens = 40
response_max_tokens = 16
response_prefix = "{PREFIX}"
cycles_per_hour = 360000.0
seed = 11
novelty_threshold = 0.9
lexical_threshold = 0.8
timeout_s = 60.0

[dream.rule]
min_chars = 20
max_repeat = 0.5
min_overlap = 1
'''


@pytest.fixture
def dream_server(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    key = ("dream-qwen3",)
    if vllm_servers.current and vllm_servers.current[0] == key:
        return vllm_servers.current[1]
    root = tmp_path_factory.mktemp("dream")
    cfg = ts.write_config(root, lr=2e-3, guard_every=8, guard_threshold=GUARD)
    cfg.write_text(cfg.read_text() + _dream_section(root))
    srv = _steering_server(vllm_servers, tmp_path_factory, key, ts.plugin_env(cfg), extra_args=("--api-key", ts.API_KEY))
    srv.served_model_name = srv.model
    srv.root, srv.config = root, cfg
    return srv


def _store(srv):
    from plasticity.dream.config import load
    from plasticity.memory import MemoryStore, sample_graph_path

    cfg = load(srv.config)
    store = MemoryStore(cfg.db)
    if store.count_notes() == 0:
        store.import_jsonl(sample_graph_path())
    return cfg, store


def _behaviour(srv) -> dict:
    """Greedy replies of the held-out prompts start with the prefix? + mean log-prob of the prefix."""
    from plasticity.eval.behaviour import parse_tests, run_tests, server_generator
    from plasticity.steering.train_in import Client

    tests = parse_tests("\n".join(json.dumps({"prompt": [{"role": "user", "content": p}], "expect": r"^In short",
                                              "max_tokens": 6, "id": f"held-{i}"}) for i, p in enumerate(HELD)))
    res = run_tests(server_generator(srv.url, api_key=ts.API_KEY, model=srv.served_model_name), tests)
    c = Client(srv.url, ts.API_KEY, srv.served_model_name)
    pre = c.tokenize(PREFIX)
    lps = []
    for p in HELD:
        ids = c.tokenize([{"role": "user", "content": p}])
        lps.append(sum(c.token_logprobs(ids + pre, len(ids), None)))
    return {"pass_rate": res["pass_rate"], "passed": res["passed"], "n": res["n"],
            "prefix_logprob": sum(lps) / len(lps), "outputs": [r["output"] for r in res["results"][:3]]}


def _report(key, value):
    REPORT[key] = value
    print(f"\n[dream e2e] {key}: {json.dumps(value, default=str)}")
    out = os.environ.get("PLASTICITY_BENCH_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "dream_e2e.json"), "w") as f:
            json.dump(REPORT, f, indent=1, default=str)


def test_loop_vs_naive_sampling_on_the_server(dream_server):
    from plasticity.dream.client import ServerClient
    from plasticity.dream.judge import Item, RubricJudge
    from plasticity.dream.loop import DreamLoop, compare

    srv = dream_server
    cfg, store = _store(srv)
    try:
        code, out = ts.request(srv, "POST", "/v1/training/pause")
        assert code == 200, out
        st = ts.status(srv)
        _report("before", {**_behaviour(srv), "heldout_ppl": st["heldout_ppl"]})
        client = ServerClient(srv.url, ts.API_KEY, timeout=60)
        # the rubric judge answered by the served model itself: a score or a recorded rejection
        note = store.list_notes(limit=2)
        v = RubricJudge(client, cfg.rubric).judge(Item((note[0].text, note[1].text), "How do for loops end?",
                                                       "In short: when the iterator is exhausted."))
        assert (v.score is not None and v.reason == "") or (v.score is None and v.reason == "judge_garbage"), v
        _report("rubric_judge_on_qwen3_tiny", {"score": v.score, "reason": v.reason, "answer": v.detail[:120]})
        t0 = time.time()
        with DreamLoop(store, client, cfg) as loop:
            rep = compare(loop, K, seed=11)
        rep["wall_s"] = round(time.time() - t0, 1)
        _report("loop_vs_naive", rep)
        loop_d, naive = rep["loop"], rep["naive"]
        assert loop_d["cycles"] == K and loop_d["accepted"] >= 5, rep
        # the accepted set is more diverse than naive sampling at the same budget
        assert loop_d["distinct_2"] > naive["distinct_2"], rep
        assert loop_d["embedding_spread"] > naive["embedding_spread"], rep
        # every candidate is kept with its score and reason; only accepted ones were queued
        cands = store.candidates()
        assert len(cands) == K and sum(c.accepted for c in cands) == loop_d["accepted"]
        assert all(c.queue_state is None for c in cands if not c.accepted)
        assert all(c.queue_state in ("journaled", "trained") for c in cands if c.accepted)
        code, dst = ts.request(srv, "GET", "/v1/dream/status")
        _report("dream_status_route", dst if code == 200 else f"HTTP {code} (route not wired)")
        if code == 200:
            assert dst["accepted"] == loop_d["accepted"] and dst["generated"] == K
    finally:
        ts.request(srv, "POST", "/v1/training/resume")
        store.close()


def _kill_after_cycles(cmd, n_lines, log_path, extra_env=None):
    env = {**os.environ, **(extra_env or {})}
    with open(log_path, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        seen = 0
        t0 = time.time()
        while seen < n_lines and time.time() - t0 < 180:
            line = p.stdout.readline()
            if not line:
                break
            seen += line.startswith('{"cycle"')
        time.sleep(0.3)  # the next cycle is being generated now
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        p.stdout.close()
    return p.returncode, seen


def test_sigkill_mid_cycle_and_restart_trains_each_accepted_once(dream_server, tmp_path):
    from models import model_dir

    from plasticity.dream.loop import ServerTokens, token_key
    from plasticity.training.core import Journal

    srv = dream_server
    cfg, store = _store(srv)
    store.close()
    ts.request(srv, "POST", "/v1/training/resume")
    cmd = [sys.executable, "-m", "plasticity.dream.cli", "--config", str(srv.config), "--server", srv.url,
           "--api-key", ts.API_KEY, "--json"]
    # 1. SIGKILL in the middle of a cycle (after 3 cycles, while the 4th generates)
    rc, seen = _kill_after_cycles(cmd + ["--cycles", "30"], 3, tmp_path / "run1.log")
    assert rc == -signal.SIGKILL and seen == 3, (tmp_path / "run1.log").read_text()[-2000:]
    from plasticity.memory import MemoryStore

    with MemoryStore(cfg.db) as s:
        running = [c for c in s.cycles() if c["status"] == "running"]
    # 2. SIGKILL between a POST the server journaled (fsync'd, 202) and mark_journaled
    env = {"PLASTICITY_DREAM_FAULT": "after_submit:1"}
    p = subprocess.run(cmd + ["--cycles", "30"], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    tok = ServerTokens.load(str(model_dir("qwen3-tiny")))
    journal = cfg.training.journal
    keys = Counter(token_key(r["context"], r["decision"]) for r in Journal(journal).read())
    with MemoryStore(cfg.db) as s:
        window = [r for r in s.queue("queued") if keys[tok.key(r.context, r.decision)]]
    assert window, "the fault hook should leave a journaled row still marked queued"
    # 3. restart and finish: nothing lost, nothing sent twice
    p = subprocess.run(cmd + ["--cycles", "4", "--wait-trained", "300"], capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])["summary"]
    st = ts.status(srv)
    assert st.get("guard", {}).get("trips", 0) == 0, st.get("guard")
    recs = Journal(journal).read()
    done = Counter(r["id"] for r in Journal(journal.with_name(journal.name + ".done")).read())
    by_key: dict[str, list[str]] = {}
    for r in recs:
        by_key.setdefault(token_key(r["context"], r["decision"]), []).append(r["id"])
    with MemoryStore(cfg.db) as s:
        acc = s.candidates(accepted=True)
        q = s.queue_counts()
        stale = [c for c in s.cycles() if c["status"] == "running"]
    problems = []
    for c in acc:
        ids = by_key.get(tok.key([{"role": "user", "content": c.scenario}], c.response), [])
        if len(ids) != 1:
            problems.append(f"candidate {c.id}: {len(ids)} journal records")
        elif done[ids[0]] != 1:
            problems.append(f"candidate {c.id}: trained {done[ids[0]]} times")
    assert not problems, problems
    assert len(recs) == len(acc)  # nothing else was journaled: no unjudged or rejected example
    assert q == {"queued": 0, "journaled": 0, "trained": len(acc)} and not stale
    _report("kill_restart", {"killed_mid_cycle_with_running_cycle": bool(running), "crash_window_rows": len(window),
                             "accepted_total": len(acc), "journal_records": len(recs),
                             "trained_records": sum(done.values()), "restart_summary": summary,
                             "examples_done": st["examples_done"], "step": st["step"]})


def test_trained_dreams_move_the_behaviour_within_the_guard(dream_server):
    if "before" not in REPORT or "kill_restart" not in REPORT:
        pytest.skip("needs the two tests above in the same session")
    srv = dream_server
    st = ts.wait_done(srv, REPORT["kill_restart"]["accepted_total"], timeout=300)
    code, snap = ts.request(srv, "POST", "/v1/snapshots", {"name": "after-dream", "note": "dream e2e"})
    assert code == 201, snap
    after = {**_behaviour(srv), "heldout_ppl": snap["heldout_ppl"]}
    before = REPORT["before"]
    rel = after["heldout_ppl"] / st["heldout_ppl_initial"] - 1
    _report("after", {**after, "heldout_ppl_initial": st["heldout_ppl_initial"], "heldout_ppl_change": rel,
                      "guard": st.get("guard"), "steps": st["step"], "examples_done": st["examples_done"]})
    assert st.get("guard", {}).get("trips", 0) == 0
    assert rel < GUARD, (before, after)
    # the answer format carried by the dream data reached the weights
    assert after["prefix_logprob"] > before["prefix_logprob"] + 0.5, (before, after)
    assert after["pass_rate"] >= before["pass_rate"]
