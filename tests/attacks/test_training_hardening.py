"""Hostile or unlucky input to online training, each refused or survived without losing an
acknowledged example: repeated client ids, bad example lookups, absurd nesting, absurd settings, a step that fails, and
a held-out text too short to evaluate. Route cases run the real routes in a FastAPI app with a
stand-in engine; the crash test is in test_training_crash_recovery.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from models import heldout_path, model_dir


class _Engine:
    def __init__(self):
        self.calls = []

    async def collective_rpc(self, method, args=()):
        self.calls.append((method, args))
        if method == "plasticity_train_enqueue":
            return [{"ok": True, "enqueued": [r["id"] for r in args[0]], "queue_full": []}]
        return [{"ok": True}]


@pytest.fixture
def client(tmp_path, monkeypatch):
    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from plasticity.training.routes import TrainingRoutes

    cfg = tmp_path / "plasticity.toml"
    cfg.write_text(f'[training]\nenabled = true\njournal = "{tmp_path / "journal.jsonl"}"\n')
    monkeypatch.setenv("PLASTICITY_CONFIG", str(cfg))
    routes = TrainingRoutes()
    routes.engine, routes.tok = _Engine(), AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    r = APIRouter()
    routes.attach(r)
    app = FastAPI()
    app.include_router(r)
    return TestClient(app), routes, tmp_path / "journal.jsonl"


def _ex(i, **kw):
    return {"context": f"question {i}", "decision": f"answer {i}", **kw}


def _journal_ids(path):
    return [json.loads(l)["id"] for l in path.read_text().splitlines()] if path.exists() else []


def test_repeated_id_in_one_body_is_a_409_naming_it(client):
    c, routes, journal = client
    r = c.post("/v1/training/examples", json=[_ex(1, id="dup"), _ex(2, id="dup"), _ex(3, id="other")])
    assert r.status_code == 409, r.text
    assert r.json()["error"]["duplicates"] == ["dup"] and "dup" in r.json()["error"]["message"]
    assert _journal_ids(journal) == []  # nothing stored, nothing acknowledged


def test_id_accepted_before_is_a_409(client):
    c, routes, journal = client
    assert c.post("/v1/training/examples", json=_ex(1, id="once")).status_code == 202
    r = c.post("/v1/training/examples", json=[_ex(2, id="fresh"), _ex(3, id="once")])
    assert r.status_code == 409 and r.json()["error"]["duplicates"] == ["once"]
    assert _journal_ids(journal) == ["once"]


def test_id_accepted_before_a_restart_is_a_409(client):
    c, routes, journal = client
    assert c.post("/v1/training/examples", json=_ex(1, id="before-restart")).status_code == 202
    routes.known_ids = set()
    routes.load_known_ids()  # what init_state does at the next start
    r = c.post("/v1/training/examples", json=_ex(2, id="before-restart"))
    assert r.status_code == 409 and _journal_ids(journal) == ["before-restart"]


def test_ids_the_server_assigns_never_collide(client):
    c, routes, journal = client
    ids = [c.post("/v1/training/examples", json=[_ex(i), _ex(i)]).json()["ids"] for i in range(3)]
    flat = [i for pair in ids for i in pair]
    assert len(set(flat)) == 6 and _journal_ids(journal) == flat


def test_lookup_reports_each_ids_state_across_a_restart(client):
    """What the dream loop reads after a crash: accepted ids are journaled, the trainer's done
    records (a torn last line ignored until it is whole) give their status, others are unknown."""
    c, routes, journal = client
    assert c.post("/v1/training/examples", json=[_ex(1, id="a"), _ex(2, id="b"), _ex(3, id="c")]).status_code == 202
    done = journal.with_name(journal.name + ".done")
    done.write_text('{"id": "a", "step": 1, "status": "trained"}\n{"id": "b", "step": 1, "sta')
    body = {"ids": ["a", "b", "c", "never-sent"]}
    r = c.post("/v1/training/examples/lookup", json=body)
    assert r.status_code == 200 and r.json()["examples"] == {"a": "trained", "b": "journaled", "c": "journaled",
                                                             "never-sent": "unknown"}
    with open(done, "a") as f:
        f.write('tus": "skipped"}\n')
    assert c.post("/v1/training/examples/lookup", json=body).json()["examples"]["b"] == "skipped"
    routes.known_ids, routes.done_status = set(), {}
    routes.done_tail = type(routes.done_tail)(done)
    routes.load_known_ids()  # what init_state does at the next start
    assert c.post("/v1/training/examples/lookup", json=body).json()["examples"] == {
        "a": "trained", "b": "skipped", "c": "journaled", "never-sent": "unknown"}


@pytest.mark.parametrize("body", [
    [1, 2], {"ids": "a"}, {"ids": []}, {"ids": [5]}, {"ids": ["../etc/passwd"]}, {"ids": ["x" * 129]},
    {"ids": [f"id-{i}" for i in range(1001)]}, {"id": ["a"]},
], ids=["list", "ids_string", "ids_empty", "id_not_string", "id_path", "id_too_long", "1001_ids", "wrong_key"])
def test_lookup_refuses_bad_bodies(client, body):
    c, routes, journal = client
    r = c.post("/v1/training/examples/lookup", json=body)
    assert r.status_code == 400 and "ids" in r.json()["error"]["message"]
    assert len(r.text) < 500  # the 1001 ids are not echoed back


def test_lookup_needs_the_servers_key(client):
    import hashlib

    c, routes, journal = client
    routes.tokens = [hashlib.sha256(b"k3y").digest()]
    assert c.post("/v1/training/examples/lookup", json={"ids": ["a"]}).status_code == 401
    r = c.post("/v1/training/examples/lookup", json={"ids": ["a"]}, headers={"Authorization": "Bearer k3y"})
    assert r.status_code == 200 and r.json()["examples"] == {"a": "unknown"}


@pytest.mark.parametrize("ctype,body", [
    ("application/json", b'{"context": ' + b"[" * 1000 + b"]" * 1000 + b', "decision": "x"}'),
    ("application/jsonl", b'{"context": "a", "decision": "b"}\n' + b"[" * 1000 + b"]" * 1000 + b"\n"),
])
def test_json_nested_1000_deep_is_a_400(client, ctype, body):
    c, routes, journal = client
    r = c.post("/v1/training/examples", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"]
    assert _journal_ids(journal) == []


def test_error_messages_do_not_echo_megabyte_inputs(client):
    c, routes, journal = client
    r = c.post("/v1/training/examples", json={"context": "a", "decision": "b", "x" * (1 << 20): 1})
    assert r.status_code == 400 and len(r.text) < 1000


# ---- settings and failed steps (the worker side) ----

def _trainer(tmp_path, **cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plasticity.training.queue import ExampleQueue
    from plasticity.training import config as tc, core, views

    m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"))
    sel = sorted(views.select([n for n, _ in m.named_parameters()], ["all-linear"]))
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    c = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "replay_ratio": 0.0, "batch_size": 2,
                      "journal": str(tmp_path / "j.jsonl"), **cfg})
    tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    return core.Trainer(m, sel, c, ExampleQueue(100), threading.Lock(), tokenizer=tok), tok


@pytest.mark.parametrize("changes,fragment", [
    ({"lr": 1e300}, "outside"), ({"lr": "1e-3"}, "must be a number"), ({"lr": True}, "boolean"),
    ({"guard_threshold": 1e300}, "outside"), ({"replay_seed": -1}, "outside"), ({"replay_seed": 2 ** 64}, "outside"),
])
def test_absurd_settings_are_refused_and_change_nothing(tmp_path, changes, fragment):
    from plasticity.training import snapshots
    from plasticity.vllm import training as wt

    tr, _ = _trainer(tmp_path)
    tr.guard = snapshots.Guard(None, 10, 0.05)

    class St:
        trainer = tr

    lr0 = tr.opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match=fragment):
        wt.settings(St(), changes)
    assert tr.opt.param_groups[0]["lr"] == lr0 and tr.guard.threshold == 0.05


def test_a_failed_step_requeues_its_examples_and_is_counted(tmp_path):
    tr, tok = _trainer(tmp_path)
    real, calls = tr.step, {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real(batch)

    tr.step = flaky
    exs = [{"id": f"e{i}", "context": tok(f"q {i}")["input_ids"], "decision": tok(" a")["input_ids"]}
           for i in range(4)]
    tr.enqueue(exs)
    tr.start()
    try:
        t0 = time.time()
        while tr.status()["examples_done"] < 4 and time.time() - t0 < 120:
            time.sleep(0.05)
    finally:
        tr.stop()
    st = tr.status()
    assert st["failed_steps"] == 1 and st["examples_done"] == 4 and st["examples_queued"] == 0
    done = [json.loads(l) for l in (tmp_path / "j.jsonl.done").read_text().splitlines()]
    assert sorted(r["id"] for r in done) == [f"e{i}" for i in range(4)]
    assert all(r["status"] == "trained" for r in done)


def test_held_out_text_shorter_than_one_window_is_refused_at_start(tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "too short"}) + "\n")
    tr, _ = _trainer(tmp_path, heldout=str(short))
    with pytest.raises(ValueError, match="shorter than one evaluation window"):
        tr.load_heldout()


def test_a_normal_held_out_text_still_loads(tmp_path):
    tr, _ = _trainer(tmp_path, heldout=str(heldout_path()))
    tr.load_heldout(max_tokens=1024)
    assert tr.heldout_ids.shape[1] == 128


@pytest.mark.parametrize("value", [0, 127, -1, 1 << 40, True, "4096", 4096.5])
def test_absurd_heldout_tokens_are_refused_in_the_config(value):
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="heldout_tokens"):
        tc.from_dict({"enabled": True, "heldout_tokens": value})


@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_atomic_steps_must_be_a_real_boolean(value):
    """`atomic_steps = "false"` must not silently read as true (nor 0 as false)."""
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="atomic_steps"):
        tc.from_dict({"enabled": True, "atomic_steps": value})


def test_heldout_tokens_bounds_the_evaluation(tmp_path):
    tr, _ = _trainer(tmp_path, heldout=str(heldout_path()), heldout_tokens=512)
    tr.load_heldout()
    assert tuple(tr.heldout_ids.shape) == (4, 128)


@pytest.mark.parametrize("value", ["", "any", "0-", "1,,2", " 1", "0-99999999", 3, None, "auto; rm"])
def test_bad_training_cpus_are_refused_in_the_config(value):
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="cpus"):
        tc.from_dict({"enabled": True, "cpus": value})


@pytest.mark.parametrize("value", ["", "auto", "inherit", "0-", " 1", "same ", 2, None, "all; rm"])
def test_bad_training_idle_cpus_are_refused_in_the_config(value):
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="idle_cpus"):
        tc.from_dict({"enabled": True, "idle_cpus": value})


@pytest.mark.parametrize("value", ["", "BF16", "fp16", "on", True, 1, None, ["bf16"], "bf16 " * 10000])
def test_bad_training_autocast_is_refused_in_the_config(value):
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="autocast") as e:
        tc.from_dict({"enabled": True, "autocast": value})
    assert len(str(e.value)) < 300  # a huge value is not echoed back whole


@pytest.mark.parametrize("value", [-1, 0, 1, 10_001, float("nan"), float("inf"), "0", True, None, [0]])
def test_bad_training_rpc_spin_ms_is_refused_in_the_config(value):
    """0 and 1 ms included: with that little spin vLLM's worker misses back-to-back RPCs for 5 s."""
    from plasticity.training import config as tc

    with pytest.raises(ValueError, match="rpc_spin_ms"):
        tc.from_dict({"enabled": True, "rpc_spin_ms": value})
