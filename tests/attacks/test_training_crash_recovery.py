"""SIGKILL in the middle of training with the default config (a journal, no checkpoints), then a
restart: the restarted weights must show every acknowledged example.

Before the fix the restart counted every example of ``<journal>.done`` as trained, although with
no checkpoint the live weights come back from the model files: what was learnt was gone and the
journal said it was there. Now, without a checkpoint, every acknowledged example is trained again.

Two real processes run the worker's Trainer on the tiny Qwen3 (transformers, CPU); the first is
killed with SIGKILL after some steps, the second recovers from the journal files alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPLY = "Ticket received. An engineer will answer within one day."
PROMPTS = [f"What is the status of ticket {n}?" for n in (101, 102, 103, 104)]

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import torch
from models import model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer
from plasticity.training.queue import ExampleQueue
from plasticity.training import config as tc, core, views

root, phase = sys.argv[2], sys.argv[3]
m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"))
sel = sorted(views.select([n for n, _ in m.named_parameters()], ["all-linear"]))
for n, p in m.named_parameters():
    p.requires_grad_(n in sel)
# the defaults of [training] where it matters: no checkpoint_dir, no checkpoint_every
cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "replay_ratio": 0.0, "batch_size": 2,
                    "journal": root + "/journal.jsonl", "yield_ms": 400.0 if phase == "1" else 0.0})
tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
tr = core.Trainer(m, sel, cfg, ExampleQueue(100), threading.Lock(), tokenizer=tok)

def nll():
    dec = tok(%r)["input_ids"]
    tot = 0.0
    with torch.no_grad():
        for p in %r:
            tot += float(core.frozen_context_loss(m, tok(p)["input_ids"], dec)[0])
    return tot / %d

n = tr.recover(cfg.journal)
print(json.dumps({"recovered": n, "nll_at_start": nll()}), flush=True)
tr.start()
total = len(core.Journal(cfg.journal).read())
while tr.status()["examples_done"] < total:
    time.sleep(0.05)
tr.stop()
print(json.dumps({"done": tr.status()["examples_done"], "nll_at_end": nll()}), flush=True)
""" % (REPLY, PROMPTS, len(PROMPTS))


def _child(root: Path, phase: str) -> subprocess.Popen:
    tests = str(Path(__file__).resolve().parents[1])
    return subprocess.Popen([sys.executable, "-c", CHILD, tests, str(root), phase], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_sigkill_mid_training_without_checkpoints_keeps_every_acknowledged_example(tmp_path):
    from transformers import AutoTokenizer

    from models import model_dir
    from plasticity.training.core import Journal

    tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    dec = tok(REPLY)["input_ids"] + [int(tok.eos_token_id)]
    recs = [{"id": f"ex-{r}-{i}", "context": tok(p)["input_ids"], "decision": dec, "t": 0.0}
            for r in range(4) for i, p in enumerate(PROMPTS)]
    Journal(tmp_path / "journal.jsonl").append(recs)  # what the route fsyncs before its 202

    # 1. train, and SIGKILL once a few steps are journaled as done (not all of them)
    p1 = _child(tmp_path, "1")
    done_path = tmp_path / "journal.jsonl.done"
    t0 = time.time()
    try:
        while time.time() - t0 < 300:
            n = len(done_path.read_text().splitlines()) if done_path.exists() else 0
            if n >= 4:
                break
            assert p1.poll() is None, p1.stdout.read()
            time.sleep(0.02)
        os.killpg(p1.pid, signal.SIGKILL)
    finally:
        p1.wait(30)
    done_before = len(done_path.read_text().splitlines())
    assert 4 <= done_before < len(recs), "the kill must land in the middle of training"

    # 2. restart from the journal files alone
    p2 = _child(tmp_path, "2")
    out, _ = p2.communicate(timeout=600)
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(lines) == 2, out
    start, end = lines
    # nothing of what was trained before the kill survived (no checkpoint), so all is trained again
    assert start["recovered"] == len(recs), (start, done_before)
    assert end["done"] == len(recs)
    # and the restarted model shows what was acknowledged: it is the model of an uninterrupted run
    # over every acknowledged example (same order, same seeds), not one that skipped some
    ref_root = tmp_path / "uninterrupted"
    ref_root.mkdir()
    Journal(ref_root / "journal.jsonl").append(recs)
    out, _ = _child(ref_root, "2").communicate(timeout=600)
    ref = [json.loads(l) for l in out.splitlines() if l.startswith("{")][-1]
    assert end["nll_at_end"] < 0.75 * start["nll_at_start"], (start, end)
    assert abs(end["nll_at_end"] - ref["nll_at_end"]) <= 1e-3 * ref["nll_at_end"], (end, ref)


@pytest.mark.parametrize("status", ["skipped", "discarded", "failed"])
def test_examples_never_trained_are_not_trained_after_a_restart(tmp_path, status):
    import threading

    from plasticity.training.queue import ExampleQueue
    from plasticity.training import config as tc, core

    cfg = tc.from_dict({"enabled": True, "journal": str(tmp_path / "j.jsonl")})
    core.Journal(cfg.journal).append([{"id": "a", "context": [1], "decision": [2]},
                                      {"id": "b", "context": [1], "decision": [2]}])
    core.Journal(cfg.done_journal).append([{"id": "a", "step": 1, "status": status},
                                           {"id": "b", "step": 1, "status": "trained"}])

    class Model:
        def named_parameters(self):
            return iter(())

        def parameters(self):
            return iter(())

    tr = core.Trainer.__new__(core.Trainer)
    tr.cfg, tr.queue, tr.lock, tr.model = cfg, ExampleQueue(10), threading.Lock(), Model()
    tr.done_journal, tr.seen, tr.stats = core.Journal(cfg.done_journal), set(), {"step": 0}
    assert tr.recover(cfg.journal) == 1  # "b" was trained but is not in any checkpoint: again
    assert tr.queue.pop(0.0)["id"] == "b"
