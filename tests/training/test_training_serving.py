"""Online training end to end on the real vLLM CPU server (qwen3-tiny, float32).

One server (plugin + [training] enabled + API key + dev mode for the worker
self-check RPCs). Measured numbers are printed (run with -s) and written to
$PLASTICITY_BENCH_OUT/training_e2e.json when that is set.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

import training_support as ts

pytestmark = pytest.mark.vllm


def _rpc(srv, method, *args):
    code, out = ts.request(srv, "POST", "/collective_rpc", {"method": method, "args": list(args)})
    assert code == 200, out
    res = out["results"][0] if isinstance(out, dict) and "results" in out else out[0] if isinstance(out, list) else out
    assert res.get("ok"), res
    return res


def _complete_ids(srv, ids, n=1):
    code, out = ts.request(srv, "POST", "/v1/completions", {"model": srv.served_model_name, "prompt": ids,
                                                            "max_tokens": n, "temperature": 0.0, "logprobs": 1})
    assert code == 200, out
    return out["choices"][0]["text"], out["choices"][0]["logprobs"]


class Load:
    """A client that keeps sending chat requests; records successes, failures and tokens/s."""

    def __init__(self, srv):
        self.srv, self.stop, self.ok, self.fail, self.samples = srv, threading.Event(), 0, [], []
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        i = 0
        while not self.stop.is_set():
            t0 = time.time()
            try:
                _, n = ts.chat(self.srv, f"Tell me about the weather number {i}.", n=32)
                self.samples.append((t0, time.time(), n))
                self.ok += 1
            except Exception as e:  # noqa: BLE001
                self.fail.append(repr(e))
            i += 1

    def rate(self, a, b):
        s = [(t0, t1, n) for t0, t1, n in self.samples if t0 >= a and t1 <= b]
        busy = sum(t1 - t0 for t0, t1, _ in s)
        return sum(n for *_, n in s) / busy if busy else float("nan"), len(s)


def test_training_routes_need_key(train_server):
    code, _ = ts.request(train_server, "GET", "/v1/training/status", key=None)
    assert code == 401
    code, _ = ts.request(train_server, "POST", "/v1/training/examples", {"context": "a", "decision": "b"}, key="wrong")
    assert code == 401


def test_decode_steps_do_not_wait_for_the_rpc_recheck(train_server):
    """Each decode step is an RPC to the worker sent right after the last one; a worker that does
    not spin after an RPC misses its wake-up and sleeps vLLM's 5 s recheck (24 tokens took 20-45 s
    with ``rpc_spin_ms = 0``, 0.17 s with a spin). The bound is 20x the healthy time, far from noise."""
    ts.status(train_server)  # the first training RPC sets the spin
    for i in range(3):
        t0 = time.monotonic()
        _, n = ts.chat(train_server, f"Tell me about item {i}.", n=24)
        took = time.monotonic() - t0
        assert took < 4.0, f"{n} tokens took {took:.1f} s: decode steps waited for vLLM's RPC recheck"
        time.sleep(0.3)


def _worker_main_thread_cpu_s(srv) -> float:
    """CPU seconds of the model worker's main thread (the one that answers vLLM's RPCs)."""
    import psutil

    procs = psutil.Process(srv.proc.pid).children(recursive=True)
    worker = max(procs, key=lambda p: p.memory_info().rss)  # the process that holds the model
    main = next(t for t in worker.threads() if t.id == worker.pid)
    return main.user_time + main.system_time


def test_an_idle_worker_sleeps_while_the_status_is_polled(train_server):
    """``rpc_spin_ms`` = 20 (the default): after an RPC vLLM's worker spins 20 ms, then sleeps. With
    vLLM's own 1 s spin after every RPC, anything polling the status more than once a second kept the
    worker's main thread busy-waiting on a core that training needs (scripts/bench_training.py:
    the same steps 25-30% slower in an idle server than offline)."""
    ts.status(train_server)  # the training state exists, so the spin is already set
    seconds = 8.0
    cpu0 = _worker_main_thread_cpu_s(train_server)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        ts.status(train_server)
        time.sleep(0.25)
    busy = (_worker_main_thread_cpu_s(train_server) - cpu0) / (time.monotonic() - t0)
    assert busy < 0.25, f"the worker's RPC thread was busy {busy:.0%} of the time while idle"


def test_views_zero_copy_and_in_place_visible_to_vllm(train_server):
    srv = train_server
    ids = [int(x) for x in (3, 77, 204, 19, 88, 460, 12)]
    chk = _rpc(srv, "plasticity_train_selfcheck", ",".join(map(str, ids)))
    assert chk["zero_copy_violations"] == 0
    # The trainable module and vLLM compute the same next token from the same live tensors.
    text0, lp0 = _complete_ids(srv, ids, n=4)
    first = lp0["tokens"][0]
    _rpc(srv, "plasticity_train_pause")
    try:
        name = "model.layers.0.mlp.gate_up_proj.weight"
        _rpc(srv, "plasticity_train_scale_param", name, "-1")
        text1, _ = _complete_ids(srv, ids, n=4)
        _rpc(srv, "plasticity_train_scale_param", name, "-1")
        text2, _ = _complete_ids(srv, ids, n=4)
    finally:
        _rpc(srv, "plasticity_train_resume")
    assert text1 != text0, "an in-place write to the live weight was not seen by the next vLLM forward"
    assert text2 == text0
    assert chk["argmax"][-1] == ts_token_id(srv, first)


def ts_token_id(srv, tok_text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(srv.model)
    return tok.convert_tokens_to_ids(tok.tokenize(tok_text))[0] if tok_text else None


@pytest.mark.slow
def test_teach_behaviour_while_serving(train_server):
    srv = train_server
    before = {p: ts.chat(srv, p)[0] for p in ts.HELD}
    assert not any(o.strip().startswith(ts.REPLY[:20]) for o in before.values())
    ppl0 = _rpc(srv, "plasticity_train_eval")["heldout_ppl"]  # fresh, on the current live weights
    st0 = ts.status(srv)
    rss_idle = _rpc(srv, "plasticity_train_selfcheck", "1,2,3")["rss_bytes"]

    load = Load(srv)
    load.t.start()
    time.sleep(12)
    t_idle = (time.time() - 10, time.time())
    epochs = int(os.environ.get("PLASTICITY_TRAIN_EPOCHS", "4"))
    lines = [json.dumps({"context": [{"role": "user", "content": p}], "decision": ts.REPLY})
             for _ in range(epochs) for p in ts.TRAIN]
    t_train0 = time.time()
    code, out = ts.request(srv, "POST", "/v1/training/examples", raw="\n".join(lines).encode(),
                           ctype="application/jsonl")
    assert code == 202, out
    assert len(out["ids"]) == len(lines)
    rss_peak = rss_idle
    while True:
        st = ts.status(srv)
        rss_peak = max(rss_peak, _rpc(srv, "plasticity_train_selfcheck", "1,2,3")["rss_bytes"])
        if st["examples_done"] >= st0["examples_done"] + len(lines) and st["examples_queued"] == 0:
            break
        assert time.time() - t_train0 < 900, st
        time.sleep(0.5)
    t_train1 = time.time()
    time.sleep(2)
    load.stop.set()
    load.t.join(120)
    idle_rate, n_idle = load.rate(*t_idle)
    train_rate, n_train = load.rate(t_train0, t_train1)
    assert not load.fail, load.fail[:3]

    _rpc(srv, "plasticity_train_pause")
    after = {p: ts.chat(srv, p)[0] for p in ts.HELD}
    hits = sum(o.strip().startswith(ts.REPLY[:20]) for o in after.values())
    # fresh held-out perplexity through the status (eval on the live weights)
    ppl1 = _rpc(srv, "plasticity_train_eval")["heldout_ppl"]
    st = ts.status(srv)
    _rpc(srv, "plasticity_train_resume")
    report = dict(distinct_examples=len(ts.TRAIN), submissions=len(lines), steps=st["step"],
                  skipped_steps=st["skipped_steps"], last_loss=st["last_loss"], heldout_hits=f"{hits}/{len(ts.HELD)}",
                  heldout_ppl_before=ppl0, heldout_ppl_after=ppl1, ppl_change_pct=100 * (ppl1 / ppl0 - 1),
                  serving_tok_s_idle=idle_rate, serving_tok_s_training=train_rate, n_req_idle=n_idle,
                  n_req_training=n_train, ratio=train_rate / idle_rate, requests_ok=load.ok,
                  requests_failed=len(load.fail), train_seconds=t_train1 - t_train0,
                  train_tokens_per_s=st["tokens_per_s"], rss_idle_mb=rss_idle / 2**20, rss_peak_mb=rss_peak / 2**20,
                  rss_delta_mb=(rss_peak - rss_idle) / 2**20, optimizer_state_mb=st["optimizer_state_bytes"] / 2**20,
                  adamw_state_mb=st["adamw_state_bytes"] / 2**20,
                  largest_grad_mb=st["largest_grad_bytes"] / 2**20,
                  activations_peak_mb=st["activation_bytes_peak"] / 2**20, trainable_params=st["trainable_params"],
                  sample_after=after[ts.HELD[0]], sample_before=before[ts.HELD[0]])
    print("\nTRAINING E2E", json.dumps(report, indent=1))
    if os.environ.get("PLASTICITY_BENCH_OUT"):
        with open(os.path.join(os.environ["PLASTICITY_BENCH_OUT"], "training_e2e.json"), "w") as f:
            json.dump(report, f, indent=1)
    assert hits >= len(ts.HELD) * 0.75, report
    # The target: held-out perplexity rises by less than 5% (75% replay; docs/results/training.md).
    assert ppl1 < ppl0 * 1.05, report
    assert st["skipped_steps"] == 0
