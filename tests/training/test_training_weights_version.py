"""After training steps, vLLM's prefix cache must not serve K/V computed under the older weights:
a cached prompt gives the same logprobs as the same prompt computed afresh (a request with a salt
of its own is never served from the cache, so it stands in for a server with the cache off)."""

from __future__ import annotations

import time
import uuid

import pytest

import training_support as ts

pytestmark = pytest.mark.vllm

PROMPT = " ".join(f"Line {i}: the ticket queue is reviewed by the support team every morning." for i in range(24))


def _logprobs(srv, salt=None):
    body = {"model": srv.served_model_name, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "logprobs": 1}
    if salt:
        body["cache_salt"] = salt
    code, out = ts.request(srv, "POST", "/v1/completions", body)
    assert code == 200, out
    return out["choices"][0]["logprobs"]["token_logprobs"]


def test_cached_prefix_is_recomputed_after_training_steps(train_server):
    srv = train_server
    warm = _logprobs(srv)
    assert _logprobs(srv) == warm  # the prompt's blocks are cached now, under the current weights
    st0 = ts.status(srv)
    exs = [{"context": f"Unrelated question {i}?", "decision": "An unrelated answer."} for i in range(8)]
    code, out = ts.request(srv, "POST", "/v1/training/examples", exs)
    assert code == 202, out
    t0 = time.time()
    while ts.status(srv)["examples_done"] < st0["examples_done"] + len(exs):
        assert time.time() - t0 < 300
        time.sleep(0.3)
    ts.request(srv, "POST", "/v1/training/pause")
    try:
        cached = _logprobs(srv)  # same prompt, no salt of its own: the cache would serve old K/V
        fresh = _logprobs(srv, salt=uuid.uuid4().hex)  # never in the cache: computed on the new weights
    finally:
        ts.request(srv, "POST", "/v1/training/resume")
    assert max(abs(a - b) for a, b in zip(fresh, warm)) > 1e-4, "training did not change the weights"
    assert max(abs(a - b) for a, b in zip(cached, fresh)) < 1e-5, (cached, fresh, warm)
