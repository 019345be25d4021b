"""Task vectors on the real vLLM CPU server (qwen3-tiny, float32): snapshots, bit-identical
rollback and negation, the merge of two behaviours trained separately, and the forgetting
guard catching a harmful run. Figures are printed (-s) and written to
$PLASTICITY_BENCH_OUT/snapshots_e2e.json when set."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

import training_support as ts
from test_training_serving import _rpc

from plasticity.eval.behaviour import behaviour_files, load_tests, run_tests, server_generator

pytestmark = pytest.mark.vllm
REPORT: dict = {}


@pytest.fixture
def tv_server(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    key = ("tv-qwen3",)
    if srv := vllm_servers.running(key):
        return srv
    root = tmp_path_factory.mktemp("tv")
    # the guard evaluates held-out perplexity every 16 steps (~2.5 s each): every 4 cost the two
    # 160-step teaching runs 80 evaluations; the harmful run's 24 steps still cross a check
    cfg = ts.write_config(root, snapshot_dir=str(root / "snapshots"), guard_every=16, guard_threshold=0.5)
    (root / "vectors").mkdir()
    cfg.write_text(cfg.read_text() + '\n[steering]\nadmin = true\nvectors_dir = "vectors"\nmax_abs_scale = 1000.0\n')
    env = {**ts.plugin_env(cfg), "VLLM_SERVER_DEV_MODE": "1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, key, env, extra_args=("--api-key", ts.API_KEY), eager=True)
    srv.served_model_name = srv.model
    srv.root = root
    return srv


def _ok(code, out, want=200):
    assert code == want, out
    return out


def _sha(srv):
    return _rpc(srv, "plasticity_train_digest", "")["sha256"]


def _teach(srv, behaviour, epochs=4):
    lines = [json.dumps({k: v for k, v in json.loads(l).items() if k in ("context", "decision")})
             for l in behaviour_files(behaviour)["train"].read_text().splitlines() if l.strip()][:40]
    st0 = ts.status(srv)
    body = "\n".join(lines * epochs).encode()
    _ok(*ts.request(srv, "POST", "/v1/training/examples", raw=body, ctype="application/jsonl"), want=202)
    return ts.wait_done(srv, st0["examples_done"] + len(lines) * epochs, timeout=900)


def _pass_rate(srv, behaviour):
    gen = server_generator(srv.url, api_key=ts.API_KEY, model=srv.served_model_name)
    tests = [t for t in load_tests(behaviour_files(behaviour)["tests"]) if not t.id.startswith("control")]
    return run_tests(gen, tests)["pass_rate"]


@pytest.mark.slow
def test_snapshots_rollback_negate_and_merge(tv_server, trained_snapshots):
    srv = tv_server
    base_sha = _sha(srv)
    rates0 = {b: _pass_rate(srv, b) for b in ("ticket-reply", "refusal")}
    # A from base
    _teach(srv, "ticket-reply")
    a_sha = _sha(srv)
    meta_a = _ok(*ts.request(srv, "POST", "/v1/snapshots", {"name": "A", "note": "ticket reply"}), want=201)
    assert meta_a["exact_roundtrip"] and meta_a["heldout_ppl"] > 0 and meta_a["training"]["optimizer"] == "apollo"
    rate_a = _pass_rate(srv, "ticket-reply")
    # back to base, bit-identical; B from base
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    assert _sha(srv) == base_sha
    _teach(srv, "refusal")
    _ok(*ts.request(srv, "POST", "/v1/snapshots", {"name": "B"}), want=201)
    b_sha = _sha(srv)
    for name in ("A", "B"):  # as saved, before later tests attach evaluations to them
        trained_snapshots.keep(name, srv.root / "snapshots" / name)
    rate_b = _pass_rate(srv, "refusal")
    # rollback to A: bit-identical; negating A from there: base, bit-identical
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "A"}))
    assert _sha(srv) == a_sha
    _ok(*ts.request(srv, "POST", "/v1/snapshots/apply", {"method": "negate", "snapshot": "A"}))
    assert _sha(srv) == base_sha
    # merges of A and B applied to the live model
    merged = {}
    for spec in ({"method": "task_arithmetic", "snapshots": ["A", "B"], "weights": [1.0, 1.0]},
                 {"method": "ties", "snapshots": ["A", "B"], "density": 0.5, "lambda": 1.0}):
        _ok(*ts.request(srv, "POST", "/v1/snapshots/apply", spec))
        merged[spec["method"]] = {b: _pass_rate(srv, b) for b in ("ticket-reply", "refusal")}
    # a merge relative to B with A weighted 0: live = base + τB + 0·(τA − τB) = B, bit-identical (float64
    # math, one rounding); a server that dropped relative_to would leave the base
    spec = {"method": "task_arithmetic", "snapshots": ["A"], "weights": [0.0], "relative_to": "B"}
    assert _ok(*ts.request(srv, "POST", "/v1/snapshots/apply", spec))["relative_to"] == "B"
    assert _sha(srv) == b_sha
    listed = _ok(*ts.request(srv, "GET", "/v1/snapshots"))
    assert [s["name"] for s in listed["snapshots"]] == ["A", "B"] and listed["base"]["in_memory"] == 0
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "B"}))
    assert _sha(srv) == b_sha
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    REPORT.update(pass_rates_base=rates0, pass_rate_A=rate_a, pass_rate_B=rate_b, merged=merged,
                  heldout_ppl_A=meta_a["heldout_ppl"])
    print("\nSNAPSHOTS E2E", json.dumps(REPORT, indent=1))
    assert rate_a >= 0.75 and rate_b >= 0.75, REPORT
    # The merged pass rates are reported, not asserted: on this 300-step base every merge we
    # tried (task arithmetic λ 0.5-1, TIES density 0.2-1, λ 1-2) loses a behaviour
    # (docs/results/task-vectors-on-the-server.md, "Merging behaviours on the tiny model"). The merge that keeps both is
    # measured on the better-pretrained base by the science test tests/training/test_merge_serving.py.


def _first_token_logprobs(srv, messages, salt=None):
    body = {"model": srv.served_model_name, "messages": messages, "max_tokens": 1, "temperature": 0.0,
            "logprobs": True, "top_logprobs": 5}
    if salt:
        body["cache_salt"] = salt
    out = _ok(*ts.request(srv, "POST", "/v1/chat/completions", body))
    return {t["token"]: t["logprob"] for t in out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def test_rollback_drops_kv_cached_under_the_old_weights(tv_server):
    """vLLM's prefix cache keys K/V by token ids, not by weights: after a rollback the same long
    prompt must be computed with the new weights (the route resets the prefix cache), as a request
    with a fresh cache_salt (never cached) is."""
    from models import heldout_path
    from plasticity.eval.behaviour import read_texts

    srv = tv_server
    msgs = [{"role": "system", "content": " ".join(read_texts(heldout_path())[:3])[:1600]},
            {"role": "user", "content": "Any news on ticket 4242?"}]
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    at_base = _first_token_logprobs(srv, msgs)  # fills the prefix cache under the base weights
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "A"}))
    served = _first_token_logprobs(srv, msgs)
    fresh = _first_token_logprobs(srv, msgs, salt=f"fresh-{time.time_ns()}")
    REPORT["stale_kv_check"] = {"base": at_base, "served_after_rollback": served, "fresh": fresh}
    assert at_base != fresh  # A answers this prompt differently from base ...
    assert served.keys() == fresh.keys(), REPORT["stale_kv_check"]  # ... and the served A is the fresh A
    assert all(abs(served[k] - fresh[k]) < 1e-4 for k in fresh), REPORT["stale_kv_check"]
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))


def test_extraction_on_a_training_server_reads_the_live_weights(tv_server, hf_ref):
    """With training on, POST /v1/steering/vectors {"extract"} runs in the worker on the weights
    being served: at the base it equals the offline extraction from the model's files, and after a
    change of the live weights it follows them (a copy loaded from the files would not)."""
    import numpy as np

    from plasticity.steering import extract as ex

    srv = tv_server
    pairs = [{"positive": f"I love {w}. It is wonderful", "negative": f"I hate {w}. It is awful"}
             for w in ("cats", "rain", "music", "tea", "books", "trains")]
    body = {"extract": {"pairs": pairs, "method": "mean_diff", "layers": "1,2"}}
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    try:
        at_base = _ok(*ts.request(srv, "POST", "/v1/steering/vectors", {"name": "live_base", **body}))
        want = ex.extract(hf_ref.model, hf_ref.tok, pairs, method="mean_diff", layers=[1, 2])
        for layer in (1, 2):
            assert abs(at_base["norm"][str(layer)] - float(np.linalg.norm(want[layer]))) < 1e-3, at_base
        _rpc(srv, "plasticity_train_scale_param", "model.layers.0.mlp.down_proj.weight", 3.0)
        changed = _ok(*ts.request(srv, "POST", "/v1/steering/vectors", {"name": "live_changed", **body}))
        assert all(abs(changed["norm"][k] - at_base["norm"][k]) > 1e-3 for k in ("1", "2")), (at_base, changed)
    finally:
        _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
        for name in ("live_base", "live_changed"):
            ts.request(srv, "DELETE", f"/v1/steering/vectors/{name}")


def test_eval_snapshot_on_the_server(tv_server, tmp_path):
    """`plasticity eval --server --snapshot A`: the server is rolled back to A, the tests run, and the
    pass rates land in A's metadata; a second run without --tests reruns the attached tests."""
    import subprocess
    import sys

    srv = tv_server
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "A"}))
    a_sha_before = _sha(srv)
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))
    n0 = len(_ok(*ts.request(srv, "GET", "/v1/snapshots/A")).get("evals") or [])
    env = {**os.environ, "PLASTICITY_API_KEY": ts.API_KEY}
    base_cmd = [sys.executable, "-m", "plasticity.cli", "eval", "--server", srv.url, "--snapshot", "A",
                "--no-plots", "--no-progress"]
    # held-out text through the server at base first: vLLM's prefix cache now holds base K/V for
    # these windows, which a rollback must not let the next eval reuse
    from models import heldout_path

    held = ["--heldout", str(heldout_path()), "--heldout-seq", "256", "--heldout-max-tokens", "2048"]
    # Long prompts (a ~400-token system text, so whole KV blocks get cached), generated at base first.
    from plasticity.eval.behaviour import read_texts

    system = " ".join(read_texts(heldout_path())[:3])[:1600]
    long_tests = tmp_path / "long.jsonl"
    long_tests.write_text("".join(json.dumps({"id": f"long-{i}", "expect": "^Ticket received", "max_tokens": 12,
                                              "prompt": [{"role": "system", "content": system},
                                                         {"role": "user", "content": f"Any news on ticket {900 + i}?"}]})
                                  + "\n" for i in range(4)))
    r0 = subprocess.run([*base_cmd[:6], *held, "--tests", str(long_tests), "--no-plots", "--no-progress",
                         "--out", str(tmp_path / "e0")], capture_output=True, text=True, env=env, timeout=600)
    assert r0.returncode == 0, r0.stdout + r0.stderr
    ppl_base = json.loads((tmp_path / "e0" / "report.json").read_text())["heldout"]["ppl"]
    r = subprocess.run(base_cmd + ["--tests", "ticket-reply", str(long_tests), *held, "--out", str(tmp_path / "e1")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _sha(srv) == a_sha_before  # the server serves A, bit for bit
    meta = _ok(*ts.request(srv, "GET", "/v1/snapshots/A"))
    ev = meta["evals"][-1]
    assert len(meta["evals"]) == n0 + 1 and ev["by"] == "plasticity eval"
    assert ev["pass_rates"]["ticket-reply"] >= 0.75, ev
    rep = json.loads((tmp_path / "e1" / "report.json").read_text())
    assert rep["snapshot"] == "A" and rep["snapshot_recorded"] is True
    # attached tests: no --tests → the files of the last eval run again
    r2 = subprocess.run(base_cmd + ["--out", str(tmp_path / "e2")], capture_output=True, text=True, env=env,
                        timeout=600)
    assert r2.returncode == 0 and "attached tests" in r2.stdout, r2.stdout + r2.stderr
    meta2 = _ok(*ts.request(srv, "GET", "/v1/snapshots/A"))
    assert len(meta2["evals"]) == n0 + 2 and meta2["evals"][-1]["pass_rates"] == ev["pass_rates"]
    # an unknown snapshot: exit 2, nothing rolled back
    r3 = subprocess.run([*base_cmd[:6], "--snapshot", "no-such", "--tests", "ticket-reply", "--no-plots",
                         "--out", str(tmp_path / "e3")], capture_output=True, text=True, env=env, timeout=120)
    assert r3.returncode == 2 and "no such snapshot" in r3.stderr, r3.stderr
    assert _sha(srv) == a_sha_before and not (tmp_path / "e3" / "report.json").exists()
    # the same snapshot folder, offline on transformers: the server's files belong to the local model
    # (fingerprint) and give the same pass rates (greedy, same weights)
    model_dir = json.loads((srv.root / "snapshots" / "A" / "meta.json").read_text())["model"]
    r4 = subprocess.run([sys.executable, "-m", "plasticity.cli", "eval", "--model", model_dir, "--snapshot",
                         str(srv.root / "snapshots" / "A"), "--tests", "ticket-reply", str(long_tests), *held,
                         "--no-plots",
                         "--no-progress", "--out", str(tmp_path / "e4")], capture_output=True, text=True, timeout=600)
    assert r4.returncode == 0, r4.stdout + r4.stderr
    rep4 = json.loads((tmp_path / "e4" / "report.json").read_text())
    local = rep4["behaviour"]["files"]["ticket-reply"]
    assert local["pass_rate"] == ev["pass_rates"]["ticket-reply"], (local, ev)
    # After the rollback the server answers the long prompts (generated at base just before) as
    # A does offline (transformers, float32)
    served = json.loads((tmp_path / "e1" / "report.json").read_text())["behaviour"]["files"]["long"]["results"]
    offline = rep4["behaviour"]["files"]["long"]["results"]
    assert [x["output"] for x in served] == [x["output"] for x in offline], (served, offline)
    ppl_local = rep4["heldout"]["ppl"]
    REPORT["eval_snapshot_ppl"] = {"server_base": ppl_base, "server_A": ev["heldout_ppl"], "local_A": ppl_local}
    assert abs(ev["heldout_ppl"] / ppl_local - 1) < 1e-3, REPORT["eval_snapshot_ppl"]
    assert abs(ev["heldout_ppl"] / ppl_base - 1) > 1e-3, REPORT["eval_snapshot_ppl"]
    REPORT["eval_snapshot_A"] = ev
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "base"}))


@pytest.mark.parametrize("path,body,code", [
    ("/v1/rollback", {"to": "no-such-snapshot"}, 404),
    ("/v1/rollback", {"to": "../etc"}, 400),
    ("/v1/rollback", {}, 400),
    ("/v1/snapshots", {"name": "A"}, 409),  # names are immutable
    ("/v1/snapshots/apply", {"method": "ties", "snapshots": ["A", "B"], "density": 0}, 400),
    ("/v1/snapshots/apply", {"method": "ties", "snapshots": ["A", "B"], "density": 1.5}, 400),
    ("/v1/snapshots/apply", {"method": "task_arithmetic", "snapshots": ["A"], "weights": [1, 2]}, 400),
    ("/v1/snapshots/apply", {"method": "task_arithmetic", "snapshots": ["A", "missing"]}, 404),
    ("/v1/snapshots/apply", {"method": "dare", "snapshots": ["A"]}, 400),
    ("/v1/snapshots/apply", {"method": "ties", "snapshots": ["A", "B"], "relative_to": "missing"}, 404),
    ("/v1/snapshots/apply", {"method": "ties", "snapshots": ["A", "B"], "relative_to": "A"}, 400),
    ("/v1/snapshots/apply", {"method": "task_arithmetic", "snapshots": ["A"], "relative_to": 3}, 400),
    ("/v1/training/settings", {"replay_seed": "x"}, 400),
    ("/v1/training/settings", {"replay_seed": True}, 400),
    ("/v1/training/settings", {"replay_seed": 1.5}, 400),
    ("/v1/training/settings", {"momentum": 0.9}, 400),
    ("/v1/snapshots/apply", {"method": "add", "snapshot": "A", "scale": "x"}, 400),
])
def test_bad_snapshot_requests_change_nothing(tv_server, path, body, code):
    srv = tv_server
    before = _sha(srv)
    got, out = ts.request(srv, "POST", path, body)
    assert got == code, out
    assert "message" in out["error"]
    assert _sha(srv) == before


def test_snapshot_from_another_model_is_refused(tv_server):
    srv = tv_server
    meta_path = srv.root / "snapshots" / "B" / "meta.json"
    meta = json.loads(meta_path.read_text())
    (srv.root / "snapshots" / "alien").mkdir()
    (srv.root / "snapshots" / "alien" / "meta.json").write_text(json.dumps({**meta, "name": "alien",
                                                                            "model_fingerprint": "f" * 32}))
    before = _sha(srv)
    code, out = ts.request(srv, "POST", "/v1/rollback", {"to": "alien"})
    assert code == 409 and "another model" in out["error"]["message"]
    assert _sha(srv) == before


TRAIN_IN_PROMPTS = [f"The {w} of the" for w in ("function", "class", "module", "value", "list", "string", "type",
                                                  "object", "method", "file", "name", "test", "error", "line",
                                                  "code", "loop")]
HELD_IN_PROMPTS = [f"A {w} is" for w in ("dictionary", "tuple", "variable", "package", "decorator", "generator",
                                         "iterator", "exception")]


def test_train_steering_vector_in(tv_server):
    """Generate with a steering vector on, train the unsteered weights toward it, drop the vector:
    KL(steered ‖ unsteered) on held-out prompts must fall."""
    import steering_support as ss
    from plasticity.steering.train_in import Client, kl_to_unsteered, steer_args, steered_samples, train_in

    srv = tv_server
    vec = {str(l): v.tolist() for l, v in ss.unit_vectors(7, [1, 2], norm=300.0).items()}
    _ok(*ts.request(srv, "POST", "/v1/steering/vectors", {"name": "style", "values": vec}))
    # How far a random direction of norm 300 moves the model differs between builds of the test model
    # (KL 0.455 on one; 1.001 on another, where training plateaued at 0.73 of it): use the largest
    # scale that moves it by a moderate amount, then rounds of 5 epochs until KL has fallen by 30%.
    client = Client(srv.url, ts.API_KEY, srv.served_model_name)
    kls = {}
    for scale in (1.0, 0.7, 0.5, 0.35):
        kls[scale] = kl_to_unsteered(client, steered_samples(client, steer_args("style", scale), HELD_IN_PROMPTS, 16))
        if kls[scale] <= 0.6:
            break
    print("\nKL by scale:", kls)
    rep = train_in(client, "style", scale, TRAIN_IN_PROMPTS, HELD_IN_PROMPTS, max_tokens=16, epochs=5, drop=True,
                   until=0.7, max_rounds=4)
    REPORT["train_steering_in"] = rep
    print("\nTRAIN-IN", json.dumps(rep, indent=1))
    assert rep["kl_before"] > 0.2, rep  # the vector does change the model
    assert rep["kl_after"] < 0.7 * rep["kl_before"], rep  # measured: 0.455 → 0.244 after 3 epochs
    assert rep["kl_rounds"] == sorted(rep["kl_rounds"], reverse=True), rep  # each round brings it closer
    code, _ = ts.request(srv, "GET", "/v1/steering/vectors")
    assert "style" not in json.dumps(_), "the vector was not dropped"


def test_guard_catches_a_harmful_run(tv_server):
    srv = tv_server
    _ok(*ts.request(srv, "POST", "/v1/rollback", {"to": "A"}))
    ref = _ok(*ts.request(srv, "GET", "/v1/snapshots/A"))
    a_sha = _sha(srv)
    trips0 = ts.status(srv)["guard"]["trips"]
    # teaching A and B may lift perplexity a few % on the way: the guard is armed at 5% for this run
    _ok(*ts.request(srv, "POST", "/v1/training/settings", {"lr": 1e-2, "guard_threshold": 0.05}))
    try:
        bad = [json.dumps({"context": "Say it.", "decision": "zzz qqq zzz qqq zzz qqq"})] * 24
        _ok(*ts.request(srv, "POST", "/v1/training/examples", raw="\n".join(bad).encode(),
                        ctype="application/jsonl"), want=202)
        t0 = time.time()
        # the event shows from the moment training pauses; heldout_ppl_after once the rollback is done
        while ((st := ts.status(srv))["guard"]["trips"] == trips0
               or st["guard"]["events"][-1]["heldout_ppl_after"] is None):
            assert st["guard"]["trips"] == trips0 or st["paused"], st  # never a trip without the pause
            assert time.time() - t0 < 600, st
            time.sleep(0.2)
    finally:
        _ok(*ts.request(srv, "POST", "/v1/training/settings", {"lr": 1e-3}))
    ev = st["guard"]["events"][-1]
    assert st["paused"] and ev["reference"] == "A"
    assert ev["heldout_ppl"] > ev["reference_ppl"] * 1.05
    assert _sha(srv) == a_sha  # rolled back bit-identically
    assert ev["heldout_ppl_after"] == ref["heldout_ppl"]  # ... so perplexity equals the snapshot's
    with urllib.request.urlopen(srv.url + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert any(l.startswith("plasticity_guard_rollbacks_total") and float(l.split()[-1]) >= 1
               for l in metrics.splitlines()), [l for l in metrics.splitlines() if "plasticity" in l]
    dropped = _ok(*ts.request(srv, "POST", "/v1/training/discard"))["discarded"]
    _ok(*ts.request(srv, "POST", "/v1/training/resume"))
    REPORT.update(guard_event=ev, discarded_after_trip=dropped)
    print("\nGUARD", json.dumps(ev, indent=1))
    if os.environ.get("PLASTICITY_BENCH_OUT"):
        with open(os.path.join(os.environ["PLASTICITY_BENCH_OUT"], "snapshots_e2e.json"), "w") as f:
            json.dump(REPORT, f, indent=1)
