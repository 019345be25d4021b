"""Snapshots served per request beside the live model as LoRA adapters, on the real vLLM CPU server
(qwen3-tiny, float32, [snapshots] serve_max = 2): behaviour A and B are trained through the routes
and saved (or, after tests/training/test_snapshot_serving.py, taken from its snapshot folder, trained there
the same way from the same base), the live weights go back to the base, and then the base, A and B
are served at once, chosen by each request's ``model``. Figures are printed (-s)."""

from __future__ import annotations

import json
import threading

import pytest

import training_support as ts
from conftest import LORA_RANK
from test_snapshot_serving import _ok, _teach

from plasticity.eval.behaviour import behaviour_files, load_tests, run_tests, server_generator

pytestmark = pytest.mark.vllm
UNRELATED = ["def fibonacci(n):", "The weather today is", "Write a list of three colours.", "import numpy as np",
             "Explain what a compiler does.", "Once upon a time", "SELECT * FROM", "My favourite food is",
             "The capital of France is", "How do I boil an egg?"]


def _rate(srv, behaviour, model):
    gen = server_generator(srv.url, api_key=ts.API_KEY, model=model)
    tests = [t for t in load_tests(behaviour_files(behaviour)["tests"]) if not t.id.startswith("control")]
    return run_tests(gen, tests)["pass_rate"], len(tests)


def _reply(srv, model, prompt, n=16):
    out = _ok(*ts.request(srv, "POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                                           "temperature": 0.0}))
    return out["choices"][0]["text"]


def _replies(srv, model):
    return [_reply(srv, model, p) for p in UNRELATED]


def test_base_and_two_snapshots_served_at_once(lora_server):
    srv = lora_server
    base = srv.served_model_name
    rates = {}
    full = {}
    saved = {m["name"] for m in _ok(*ts.request(srv, "GET", "/v1/snapshots"))["snapshots"]}
    print(f"\nsnapshots A, B: {'from the snapshot test' if {'A', 'B'} <= saved else 'trained here'}")
    for name, behaviour in (("A", "ticket-reply"), ("B", "refusal")):
        if {"A", "B"} <= saved:
            _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": name}))
        else:
            _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
            _teach(srv, behaviour)
            _ok(*ts.request(srv, "POST", "/v1/snapshots", {"name": name}), want=201)
        rates[name] = _rate(srv, behaviour, base)[0]
        full[name] = _replies(srv, base)
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    base_rates = {b: _rate(srv, b, base)[0] for b in ("ticket-reply", "refusal")}
    base_replies = _replies(srv, base)

    served = {n: _ok(*ts.request(srv, "POST", f"/v1/snapshots/{n}/serve", {"energy": 0.99}, timeout=600))
              for n in ("A", "B")}
    for n, s in served.items():
        assert s["served"] == n and 1 <= s["ranks"]["max"] <= LORA_RANK and 0 <= s["rel_error"] < 1, s
    listed = _ok(*ts.request(srv, "GET", "/v1/snapshots"))["served"]
    assert sorted(listed) == ["A", "B"] and not any(v["stale"] for v in listed.values()), listed

    got = {"A": _rate(srv, "ticket-reply", "A"), "B": _rate(srv, "refusal", "B")}
    report = {"full_weight": rates, "adapter": {n: r for n, (r, _) in got.items()}, "base": base_rates,
              "ranks": {n: s["ranks"] for n, s in served.items()},
              "rel_error": {n: s["rel_error"] for n, s in served.items()}}
    same = {n: sum(a == b for a, b in zip(_replies(srv, n), full[n])) for n in ("A", "B")}
    report["unrelated_equal_to_full_weight"] = same
    report["base_unchanged"] = _replies(srv, base) == base_replies
    print("\nSNAPSHOTS AS ADAPTERS", json.dumps(report, indent=1))
    for n, (rate, count) in got.items():
        # within one prompt of the full-weight snapshot (the adapter keeps 99% of each delta's energy,
        # capped at rank 64)
        assert abs(rate - rates[n]) <= 1.0 / count + 1e-9, report
    assert all(v >= 0.9 * len(UNRELATED) for v in same.values()), report
    assert report["base_unchanged"], report
    assert _rate(srv, "ticket-reply", base)[0] == base_rates["ticket-reply"]

    # mixed concurrent requests: each equals its solo reply
    solo = {m: _replies(srv, m) for m in (base, "A", "B")}
    mixed: dict = {}

    def worker(m):
        mixed[m] = _replies(srv, m)

    threads = [threading.Thread(target=worker, args=(m,)) for m in (base, "A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mixed == solo

    # a training step makes every adapter stale: refused with the way out, until rebuilt
    st0 = ts.status(srv)
    ex = [{"context": p, "decision": "Noted."} for p in ts.TRAIN[:4]]
    _ok(*ts.request(srv, "POST", "/v1/training/examples", ex), want=202)
    ts.wait_done(srv, st0["examples_done"] + 4)
    code, out = ts.request(srv, "POST", "/v1/completions", {"model": "A", "prompt": "Hello", "max_tokens": 2})
    assert code == 409 and "rebuilds it" in out["error"]["message"], out
    assert _ok(*ts.request(srv, "GET", "/v1/snapshots"))["served"]["A"]["stale"] is True
    assert _reply(srv, base, "Hello", 2) is not None  # the base is never refused
    again = _ok(*ts.request(srv, "POST", "/v1/snapshots/A/serve", {}, timeout=600))
    assert again["weights_version"] != served["A"]["weights_version"]
    assert _rate(srv, "ticket-reply", "A")[0] >= rates["A"] - 1.0 / got["A"][1] - 1e-9

    # unload
    _ok(*ts.request(srv, "DELETE", "/v1/snapshots/B/serve"))
    code, out = ts.request(srv, "POST", "/v1/completions", {"model": "B", "prompt": "Hello", "max_tokens": 2})
    assert code == 404, out
    assert sorted(_ok(*ts.request(srv, "GET", "/v1/snapshots"))["served"]) == ["A"]
    _ok(*ts.request(srv, "DELETE", "/v1/snapshots/A/serve"))
