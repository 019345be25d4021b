"""Two behaviours trained apart from the base, snapshotted, and merged on the live server: the
merge keeps both (the task-vector issue's merge proof), on the real vLLM CPU server.

The base is ``qwen3-tiny-long`` (qwen3-tiny pretrained 1200 steps, held-out perplexity ~51):
on the 300-step qwen3-tiny no merge keeps both behaviours (docs/results/task-vectors-on-the-server.md, "Merging
behaviours on the tiny model"). Each run also trains on 40 anchors (generic questions → the
base's own greedy reply) with 75% replay of the corpus, each from the same replay seed
(``/v1/training/settings`` ``replay_seed``); a third run on the anchors and replay alone is
snapshot N, the part the two runs share. The merge under test is task arithmetic relative to N
with weights 1, 1 and λ 1: live = base + τN + (τA − τN) + (τB − τN), the shared part counted
once, no knob to tune; in the offline sweep it kept ≥ 0.875 of both behaviours for each of four
trainer seeds. The plain merge, and TIES (density 0.5, λ 1.5) with and without N, are measured
beside it and reported. The CLI (``plasticity snapshot``) does the saves and the
merges. Figures are printed (-s) and written to $PLASTICITY_BENCH_OUT/merge_e2e.json when set.

A ``science`` test (off by default, ``-m science``): the retention is a measured claim, and it does
not hold everywhere. On the project CI's machine (stop 25) the same recipe gave the relative merge
0.00 ticket-reply / 1.00 refusal, with A and B alone at 1.00 and N at 0.00. The mechanics it uses
(snapshot save/apply/rollback through the CLI, exact round trips) are gated by
tests/training/test_snapshot_serving.py and tests/attacks/."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

import training_support as ts
from test_snapshot_serving import _ok, _pass_rate, _sha

from plasticity.eval.anchors import anchor_prompts
from plasticity.eval.behaviour import behaviour_files

pytestmark = [pytest.mark.vllm, pytest.mark.science]
PAIR = ("ticket-reply", "refusal")
STEPS = 160  # examples per run; one per step, beside three replay windows (batch 4, replay 0.75)
REPORT: dict = {}


@pytest.fixture
def merge_server(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    key = ("merge-qwen3-long",)
    if srv := vllm_servers.running(key):
        return srv
    root = tmp_path_factory.mktemp("merge")
    cfg = ts.write_config(root, snapshot_dir=str(root / "snapshots"))
    env = {**ts.plugin_env(cfg), "VLLM_SERVER_DEV_MODE": "1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, key, env, extra_args=("--api-key", ts.API_KEY),
                           model="qwen3-tiny-long")
    srv.served_model_name = srv.model
    return srv


def _cli(srv, *args) -> dict:
    p = subprocess.run([sys.executable, "-m", "plasticity.cli", "snapshot", *args, "--server", srv.url,
                        "--api-key", ts.API_KEY], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _base_reply(srv, question: str) -> dict:
    """An anchor: the base model's own greedy reply, at most 12 tokens as in the offline sweep; the
    end token is trained only where the model itself ended the reply."""
    msgs = [{"role": "user", "content": question}]
    out = _ok(*ts.request(srv, "POST", "/v1/chat/completions", {"model": srv.served_model_name, "messages": msgs,
                                                                 "max_tokens": 12, "temperature": 0.0}))
    ch = out["choices"][0]
    return {"context": msgs, "decision": ch["message"]["content"], "eos": ch["finish_reason"] == "stop"}


def _train(srv, examples: list[dict]) -> None:
    st0 = ts.status(srv)
    body = "\n".join(json.dumps(examples[i % len(examples)]) for i in range(STEPS)).encode()
    _ok(*ts.request(srv, "POST", "/v1/training/examples", raw=body, ctype="application/jsonl"), want=202)
    ts.wait_done(srv, st0["examples_done"] + STEPS, timeout=1200)


def test_merge_relative_to_the_shared_run_keeps_both_behaviours(merge_server):
    srv = merge_server
    base_sha = _sha(srv)
    rates0 = {b: _pass_rate(srv, b) for b in PAIR}
    anchors = [_base_reply(srv, q) for q in anchor_prompts(40)]

    def rows(b):
        return [{k: v for k, v in json.loads(l).items() if k in ("context", "decision")}
                for l in behaviour_files(b)["train"].read_text().splitlines() if l.strip()]

    runs = {"N": anchors, "A": rows(PAIR[0]) + anchors, "B": rows(PAIR[1]) + anchors}
    alone, norms = {}, {}
    for name, ex in runs.items():
        _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
        assert _sha(srv) == base_sha
        ex = list(ex)
        random.Random(1).shuffle(ex)
        # every run replays the same corpus windows, so the replay part of τN, τA, τB is one direction
        _ok(*ts.request(srv, "POST", "/v1/training/settings", {"replay_seed": 10}))
        _train(srv, ex)
        meta = _cli(srv, "save", name, "--note", f"{name}: {len(ex)} examples, {STEPS} steps")
        assert meta["exact_roundtrip"], meta
        norms[name] = round(meta["norm"], 3)
        alone[name] = {b: _pass_rate(srv, b) for b in PAIR}
    # the live model is the last run; each merge below replaces it (live = base + merge)
    merges = {
        "task_arithmetic_relative": ["--method", "task_arithmetic", "A", "B", "--relative-to", "N"],
        "task_arithmetic": ["--method", "task_arithmetic", "A", "B"],
        "ties_relative": ["--method", "ties", "A", "B", "--density", "0.5", "--lambda", "1.5", "--relative-to", "N"],
        "ties": ["--method", "ties", "A", "B", "--density", "0.5", "--lambda", "1.5"],
    }
    merged = {}
    for label, args in merges.items():
        out = _cli(srv, "apply", *args)
        assert out["merged"] == ["A", "B"] and out.get("relative_to") == ("N" if "--relative-to" in args else None)
        merged[label] = {b: _pass_rate(srv, b) for b in PAIR}
    listed = _cli(srv, "list")
    assert [s["name"] for s in listed["snapshots"]] == ["N", "A", "B"]
    _cli(srv, "rollback", "base")
    assert _sha(srv) == base_sha
    REPORT.update(model="qwen3-tiny-long", steps=STEPS, pass_rates_base=rates0, alone=alone, norms=norms,
                  merged=merged)
    print("\nMERGE E2E", json.dumps(REPORT, indent=1))
    if os.environ.get("PLASTICITY_BENCH_OUT"):
        with open(os.path.join(os.environ["PLASTICITY_BENCH_OUT"], "merge_e2e.json"), "w") as f:
            json.dump(REPORT, f, indent=1)
    assert all(rates0[b] == 0.0 for b in PAIR), REPORT  # the base shows neither behaviour
    assert alone["A"][PAIR[0]] >= 0.75 and alone["B"][PAIR[1]] >= 0.75, REPORT
    assert alone["N"][PAIR[0]] == 0.0 and alone["N"][PAIR[1]] == 0.0, REPORT  # N is not a behaviour
    # Both behaviours on at least half the held-out prompts. Offline (scripts/merge_sweep.py, round 5)
    # this merge kept 0.88-1.00 of each for four trainer seeds; on the server it gave 0.75 / 1.00 and,
    # on a second build of the model (other bytes, perplexity 54.0), 1.00 / 0.75, where the plain sum
    # kept 0.00 / 0.94 and 0.00 / 0.00.
    rel = merged["task_arithmetic_relative"]
    assert rel[PAIR[0]] >= 0.5 and rel[PAIR[1]] >= 0.5, REPORT
