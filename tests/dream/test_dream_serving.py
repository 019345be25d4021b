"""The dream loop end to end on the real vLLM CPU server (qwen3-tiny, float32, plugin, API key):

1. the loop (walk → scenario → answer → rule judge → novelty) vs naive sampling from one random
   note, the same memories, temperature and budget, with the weights held still (training
   paused): accept rate and diversity (distinct-n, embedding spread of the served model's
   centred hidden states), also size- and token-matched;
2. the loop as a process, SIGKILLed mid-cycle, then SIGKILLed again between a journaled POST
   and its bookkeeping, then restarted: every accepted candidate is in the server's journal
   exactly once and trained exactly once (checked on ``<journal>`` and ``<journal>.done``);
3. the accepted scenarios, trained by the server, move a behavioural test (the answer format
   the dream data carries) while held-out perplexity stays within the forgetting guard
   (a measured claim: in the science tier, ``-m science``).

Figures are printed (-s) and written to $PLASTICITY_BENCH_OUT/dream_e2e.json when set.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import dream_serving_support as dss
import training_support as ts

pytestmark = pytest.mark.vllm

K = int(os.environ.get("PLASTICITY_DREAM_K", "40"))
TRAIN = int(os.environ.get("PLASTICITY_DREAM_TRAIN", "48"))  # accepted dream examples trained before the check
TRAIN_MAX = int(os.environ.get("PLASTICITY_DREAM_TRAIN_MAX", "96"))  # ... and at most, 16 more at a time
GUARD = 0.10
REPORT: dict = {}


@pytest.fixture
def dream_server(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    key = ("dream-qwen3",)
    if srv := vllm_servers.running(key):
        return srv
    root = tmp_path_factory.mktemp("dream")
    cfg = ts.write_config(root, lr=2e-3, guard_every=8, guard_threshold=GUARD)
    cfg.write_text(cfg.read_text() + dss.dream_section(root))
    srv = _steering_server(vllm_servers, tmp_path_factory, key, ts.plugin_env(cfg), extra_args=("--api-key", ts.API_KEY),
                           eager=True)
    srv.served_model_name = srv.model
    srv.root, srv.config = root, cfg
    return srv


_report = dss.reporter(REPORT, "dream e2e", "dream_e2e.json")


def test_loop_vs_naive_sampling_on_the_server(dream_server):
    from plasticity.dream.client import ServerClient
    from plasticity.dream.judge import Item, RubricJudge
    from plasticity.dream.compare import compare
    from plasticity.dream.loop import DreamLoop

    srv = dream_server
    cfg, store = dss.store(srv)
    try:
        code, out = ts.request(srv, "POST", "/v1/training/pause")
        assert code == 200, out
        st = ts.status(srv)
        _report("before", {**dss.behaviour(srv), "heldout_ppl": st["heldout_ppl"]})
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


def _exactly_once_problems(accepted, journal_ids_by_key, tok, trained: Counter, what: str) -> list[str]:
    """Each accepted candidate: one journal record (matched by token content, since the server
    assigns its own ids), and that record counted once in ``trained``."""
    problems = []
    for c in accepted:
        ids = journal_ids_by_key.get(tok.key([{"role": "user", "content": c.scenario}], c.response), [])
        if len(ids) != 1:
            problems.append(f"candidate {c.id}: {len(ids)} journal records")
        elif trained[ids[0]] != 1:
            problems.append(f"candidate {c.id}: {what} {trained[ids[0]]} times")
    return problems


def test_sigkill_mid_cycle_and_restart_trains_each_accepted_once(dream_server, tmp_path):
    from models import model_dir

    from dream_support import ServerTokens, token_key
    from plasticity.training.core import Journal

    srv = dream_server
    cfg, store = dss.store(srv)
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
    problems = _exactly_once_problems(acc, by_key, tok, done, "trained")
    assert not problems, problems
    assert len(recs) == len(acc)  # nothing else was journaled: no unjudged or rejected example
    assert q == {"queued": 0, "journaled": 0, "trained": len(acc)} and not stale
    _report("kill_restart", {"killed_mid_cycle_with_running_cycle": bool(running), "crash_window_rows": len(window),
                             "accepted_total": len(acc), "journal_records": len(recs),
                             "trained_records": sum(done.values()), "restart_summary": summary,
                             "examples_done": st["examples_done"], "step": st["step"]})


# A measured claim about the model (enough dream data moves a greedy reply), not a property of the
# code, and 3-4 minutes of training: the science tier (-m science). What CI keeps of this path is
# the code's part: each accepted scenario journaled and trained exactly once (the two tests above).
@pytest.mark.science
def test_trained_dreams_move_the_behaviour_within_the_guard(dream_server):
    if "before" not in REPORT or "kill_restart" not in REPORT:
        pytest.skip("needs the two tests above in the same session")
    srv = dream_server
    # The offline calibration (docs/dream.md) needs about 40 dream examples for the greedy reply
    # to change; the kill/restart test left ~19. Top up to TRAIN accepted ones, all trained, then
    # in steps of 16 up to TRAIN_MAX while the behaviour has not moved (the dream data and the
    # training order vary from run to run: 4/12 to 12/12 after 48 were seen).
    before = REPORT["before"]
    rounds = []
    for target in range(TRAIN, TRAIN_MAX + 1, 16):
        top = dss.top_up(srv, target)
        st = ts.wait_done(srv, top["accepted_total"], timeout=600)
        b = dss.behaviour(srv)
        rounds.append({"accepted": top["accepted_total"], "cycles": top["cycles"], "pass_rate": b["pass_rate"],
                       "prefix_logprob": b["prefix_logprob"], "steps": st["step"]})
        _report("top_up", rounds)
        if b["pass_rate"] >= before["pass_rate"] + 0.5:
            break
    code, snap = ts.request(srv, "POST", "/v1/snapshots", {"name": "after-dream", "note": "dream e2e"})
    assert code == 201, snap
    after = {**dss.behaviour(srv), "heldout_ppl": snap["heldout_ppl"]}
    rel = after["heldout_ppl"] / st["heldout_ppl_initial"] - 1
    _report("after", {**after, "heldout_ppl_initial": st["heldout_ppl_initial"], "heldout_ppl_change": rel,
                      "guard": st.get("guard"), "steps": st["step"], "examples_done": st["examples_done"]})
    assert top["accepted_total"] >= TRAIN and st["examples_done"] >= top["accepted_total"], (top, st)
    assert st.get("guard", {}).get("trips", 0) == 0
    assert rel < GUARD, (before, after)
    # the answer format carried by the dream data reached the weights: the log-probability of the
    # prefix, and the behavioural test itself (greedy replies of held-out prompts)
    assert after["prefix_logprob"] > before["prefix_logprob"] + 0.5, (before, after)
    assert after["pass_rate"] >= before["pass_rate"] + 0.5, (before, after)


def _stream(srv, path, body) -> int:
    import urllib.request

    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {ts.API_KEY}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        return r.status


def _ro(db):
    """A read-only connection: it takes no lock a frozen server could be holding (WAL readers never wait)."""
    import sqlite3

    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def _latest_cycle(db) -> dict | None:
    with contextlib.closing(_ro(db)) as c:
        row = c.execute("SELECT id, status FROM cycles ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else {"id": row[0], "status": row[1]}


def _cycle_status_after_crash(db, cycle_id: int) -> str:
    """A cycle's status as recovered from the database files once no process has them open: a
    read-write connection rebuilds the WAL index from the WAL file (a read-only one may not)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(str(db), timeout=5)) as c:
        return c.execute("SELECT status FROM cycles WHERE id = ?", (cycle_id,)).fetchone()[0]


def _accepted_count(db) -> int:
    with contextlib.closing(_ro(db)) as c:
        return c.execute("SELECT count(*) FROM candidates WHERE accepted = 1").fetchone()[0]


def _kill_config(root, max_cycles: int):
    cfg = ts.write_config(root, lr=2e-3, checkpoint_dir=str(root / "ckpt"), checkpoint_every=4)
    section = dss.dream_section(root).replace('judge = "rule"', f'judge = "rule"\nenabled = true\nmax_cycles = {max_cycles}'
                                                                  '\ncapture = true')
    cfg.write_text(cfg.read_text() + section)
    return cfg


@pytest.mark.slow
def test_kill_the_server_mid_cycle_and_restart(vllm_servers, tmp_path):
    """The loop running inside the server ([dream] enabled), the whole server SIGKILLed while a cycle
    runs, then restarted: every accepted scenario is journaled exactly once, and its training is in
    the final weights exactly once (done before the restored checkpoint, or redone after it)."""
    from models import model_dir
    from vllm_server import VLLMServer

    from plasticity.dream.config import load
    from dream_support import ServerTokens, token_key
    from plasticity.memory import MemoryStore, sample_graph_path
    from plasticity.training.core import Journal

    vllm_servers.close()  # one server at a time on 2 cores
    root = tmp_path
    cfgp = _kill_config(root, 0)
    cfg = load(cfgp)
    with MemoryStore(cfg.db) as s:
        s.import_jsonl(sample_graph_path())
    env = ts.plugin_env(cfgp)
    s1 = VLLMServer(model_dir("qwen3-tiny"), env=env, extra_args=("--api-key", ts.API_KEY, "--enforce-eager"),
                    log_path=root / "s1.log").start()
    killed_at = None
    try:
        t0 = time.time()
        while time.time() - t0 < 600:
            with MemoryStore(cfg.db) as s:
                acc = len(s.candidates(accepted=True))
                running = [c for c in s.cycles(limit=1) if c["status"] == "running"]
            # after a training checkpoint, so the restart keeps some training and redoes the rest
            if acc >= 6 and running and any((root / "ckpt").glob("step-*.safetensors")):
                # Freeze the whole server first (the API server, engine core and worker at once), then
                # look again: the cycle seen running may have finished between the read and the signal.
                # Kill only a server frozen inside a cycle, otherwise let it go on and look later.
                os.killpg(s1.proc.pid, signal.SIGSTOP)
                frozen = _latest_cycle(cfg.db)
                if frozen is not None and frozen["status"] == "running":
                    os.killpg(s1.proc.pid, signal.SIGKILL)
                    killed_at = {"accepted": _accepted_count(cfg.db), "cycle": frozen["id"]}
                    break
                os.killpg(s1.proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        assert killed_at, f"no running cycle after 6 accepted and a checkpoint in 600 s:\n{s1.log_tail()}"
        s1.proc.wait(30)
    finally:
        s1.stop()
    # What the kill left on disk. A commit can be in the WAL file but not yet in the shared index when
    # SIGSTOP lands: the frozen read saw "running", and SQLite's recovery (the first connection after
    # every process is gone) makes that commit visible. Such a cycle had finished; it is not "killed".
    killed_at["on_disk"] = _cycle_status_after_crash(cfg.db, killed_at["cycle"])
    assert killed_at["on_disk"] in ("running", "done"), killed_at
    journal = cfg.training.journal
    done_path = journal.with_name(journal.name + ".done")
    n_done_before = len(Journal(done_path).read()) if done_path.exists() else 0
    ckpts = sorted((root / "ckpt").glob("step-*.safetensors"))
    restored = int(ckpts[-1].stem.split("-")[1]) if ckpts else None
    def kept(done):  # trained before the kill and in the restored checkpoint
        return {r["id"] for r in done[:n_done_before] if restored is not None and int(r["step"]) <= restored}

    # restart, bounded to 6 more cycles so the test ends
    _kill_config(root, 6)
    s2 = VLLMServer(model_dir("qwen3-tiny"), env=env, extra_args=("--api-key", ts.API_KEY, "--enforce-eager"),
                    log_path=root / "s2.log").start()
    try:
        t0 = time.time()
        while time.time() - t0 < 600:
            code, dst = ts.request(s2, "GET", "/v1/dream/status")
            st = ts.status(s2)
            recs, done = Journal(journal).read(), Journal(done_path).read()
            after = {r["id"] for r in done[n_done_before:]}
            if (code == 200 and (dst.get("runner") or {}).get("state") == "finished" and st["examples_queued"] == 0
                    and dst["queue"]["queued"] == 0 and all(r["id"] in after or r["id"] in kept(done)
                                                             for r in recs)):
                break
            time.sleep(1)
        else:
            pytest.fail(f"restart did not finish: {dst} {st}")
        # opt-in capture ([dream] capture = true): two served requests (one streamed) become notes;
        # the loop's own generations (X-Plasticity-Source: dream) did not. Text completions, since
        # the tiny model answers most chat prompts with blank lines (not captured: no answer);
        # chat bodies and streams are covered by tests/memory/test_memory_capture.py.
        for stream in (False, True):
            body = {"model": s2.model, "prompt": f"The for statement {int(stream)}", "max_tokens": 8,
                    "temperature": 0.0, "stream": stream}
            code = _stream(s2, "/v1/completions", body)
            assert code == 200
        time.sleep(1.0)
        with MemoryStore(cfg.db) as s:
            conv = s.list_notes(source="conversation")
        code, dst = ts.request(s2, "GET", "/v1/dream/status")
        _report("capture", {"notes": [n.text for n in conv], "status": dst.get("capture")})
        assert sorted(n.text.split("\n")[0] for n in conv) == ["user: The for statement 0",
                                                               "user: The for statement 1"], conv
        assert all(n.text.split("\n")[1].startswith("assistant: ") for n in conv)
        assert dst["capture"]["captured"] == 2, dst["capture"]
    finally:
        s2.stop()
    tok = ServerTokens.load(str(model_dir("qwen3-tiny")))
    recs = Journal(journal).read()
    done = Journal(done_path).read()
    by_key: dict[str, list[str]] = {}
    for r in recs:
        by_key.setdefault(token_key(r["context"], r["decision"]), []).append(r["id"])
    # training that is in the final weights: before the kill only up to the restored checkpoint
    counted = Counter(r["id"] for r in done[:n_done_before] if restored is not None and int(r["step"]) <= restored)
    counted.update(r["id"] for r in done[n_done_before:])
    with MemoryStore(cfg.db) as s:
        acc = s.candidates(accepted=True)
        cycles = s.cycles()
    problems = _exactly_once_problems(acc, by_key, tok, counted, "in the weights")
    _report("kill_server_restart", {"killed_at": killed_at, "restored_checkpoint_step": restored,
                                    "done_records_before_kill": n_done_before, "accepted_total": len(acc),
                                    "journal_records": len(recs), "done_records": len(done),
                                    "redone_after_restart": sum(1 for r in done[:n_done_before]
                                                                if restored is None or int(r["step"]) > restored),
                                    "killed_cycle_status": next(c["status"] for c in cycles
                                                                if c["id"] == killed_at["cycle"])})
    assert not problems, problems
    assert len(recs) == len(acc) and len(acc) >= killed_at["accepted"] and restored is not None
    # a cycle the kill interrupted is closed as failed on restart; one whose commit had landed stays done
    expected = "failed" if killed_at["on_disk"] == "running" else "done"
    assert next(c["status"] for c in cycles if c["id"] == killed_at["cycle"]) == expected, killed_at
