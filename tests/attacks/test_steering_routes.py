"""Steering flags on routes that do not validate them, forged signatures, and bodies that are too
big or too deep, through the real middleware and the real worker-side state (no vLLM server; the
same cases run against a live server in scripts/probe.py).

Before the fix a flag sent through ``/invocations`` or ``/v1/chat/completions/batch`` skipped the
middleware's validation and salt, yet the worker steered it, so unsteered requests for the same
prompt reused steered K/V."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from capture_support import asgi_post
from plasticity.steering.catalogue import Catalogue
from plasticity.steering.middleware import PlasticityMiddleware, generation_routes
from plasticity.steering.config import SteeringConfig
from plasticity.steering.spec import SIG_KEY, sign, verify

HIDDEN, LAYERS = 8, 2
KEY = b"k" * 32


class _Engine:
    async def collective_rpc(self, method, args=()):
        return [{"ok": True}]


@pytest.fixture
def catalogue():
    cat = Catalogue(_Engine(), SteeringConfig(max_abs_scale=100.0),
                    {"hidden_size": HIDDEN, "num_layers": LAYERS, "dtype": "float32"})
    asyncio.run(cat.add("alpha", {0: np.ones(HIDDEN, np.float32), 1: np.ones(HIDDEN, np.float32)}, "inline"))
    return cat


class _Recorder:
    """Stands in for vLLM's app: records what reaches it."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.bodies.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _call(mw, path, body, headers=None, chunks=2):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asgi_post(mw, path, raw, headers, chunks)


def _mw(catalogue, **kw):
    app = _Recorder()
    return app, PlasticityMiddleware(app, get_catalogue=lambda: catalogue, get_key=lambda: KEY, **kw)


STEERED = {"model": "m", "prompt": "hi", "max_tokens": 2, "vllm_xargs": {"steer": "alpha", "steer_scale": 2}}


@pytest.mark.parametrize("path,body", [
    ("/invocations", STEERED),
    ("/v1/chat/completions/batch", {"model": "m", "messages": [[{"role": "user", "content": "hi"}]],
                                    "vllm_xargs": {"steer": "alpha"}}),
    ("/v1/messages", {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
                      "vllm_xargs": {"steer": "alpha"}}),
    ("/v1/responses", {"model": "m", "input": "hi", "vllm_xargs": {"steer": "alpha"}}),
    ("/v2/a/route/vllm/adds/later", [{"request": STEERED}]),
])
def test_steering_flag_on_a_route_that_does_not_validate_it_is_refused(catalogue, path, body):
    app, mw = _mw(catalogue)
    got = _call(mw, path, body)
    assert got["status"] == 400, got
    assert "steering is supported on" in json.loads(got["body"])["error"]["message"]
    assert app.bodies == []  # never reached vLLM


def test_invalid_flag_on_invocations_is_refused_not_ignored(catalogue):
    app, mw = _mw(catalogue)
    got = _call(mw, "/invocations", {**STEERED, "vllm_xargs": {"steer": "no-such-vector"}})
    assert got["status"] == 400 and app.bodies == []


def test_client_cannot_send_the_server_signature(catalogue):
    app, mw = _mw(catalogue)
    forged = {**STEERED, "vllm_xargs": {"steer": "alpha", "steer_scale": "2.0", SIG_KEY: "0" * 32}}
    got = _call(mw, "/v1/completions", forged)
    assert got["status"] == 400 and SIG_KEY in json.loads(got["body"])["error"]["message"]
    assert app.bodies == []


def test_validated_flag_reaches_the_engine_salted_and_signed(catalogue):
    app, mw = _mw(catalogue)
    got = _call(mw, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                             "vllm_xargs": {"steer": "alpha", "steer_scale": 2}})
    assert got["status"] == 200
    doc = json.loads(app.bodies[0][1])
    assert doc["cache_salt"].startswith("plasticity-steer-")
    assert verify(KEY, doc["vllm_xargs"]) and not verify(b"x" * 32, doc["vllm_xargs"])


def _worker_state():
    from plasticity.steering.slots import SteeringState

    class Block(torch.nn.Module):
        def forward(self, h, r):
            return h, r

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block() for _ in range(LAYERS)])
    st = SteeringState(model, hidden=HIDDEN, num_layers=LAYERS, max_tokens=16, dtype=torch.float32,
                       device=torch.device("cpu"), num_slots=4)
    st.register_vector("alpha", [0, 1], np.ones(2 * HIDDEN, np.float32).tobytes())
    return st


def test_worker_never_steers_an_unsigned_flag():
    st = _worker_state()
    flag = {"steer": "alpha", "steer_scale": "2.0"}
    assert st.spec_for("r1", flag) is None  # no key agreed yet: nothing is steered
    st.agree_request_key(KEY)
    assert st.spec_for("r2", flag) is None  # no signature (arrived through an unvalidated route)
    assert st.spec_for("r3", {**flag, SIG_KEY: "0" * 32}) is None  # forged
    assert st.spec_for("r4", {**flag, SIG_KEY: sign(b"y" * 32, flag)}) is None  # signed with another key
    assert st.spec_for("r5", {**flag, SIG_KEY: sign(KEY, flag)}).names == ("alpha",)
    # and the worker's index really stays at slot 0 for the unsigned request
    st.fill(["r2", "r5"], np.array([0, 3, 6]), {"r2": flag, "r5": {**flag, SIG_KEY: sign(KEY, flag)}}.get)
    assert st.slots_np[:3].tolist() == [0, 0, 0] and st.slots_np[3:6].min() > 0


def test_the_first_key_wins_on_every_worker():
    st = _worker_state()
    assert st.agree_request_key(KEY) == KEY
    assert st.agree_request_key(b"z" * 32) == KEY


def test_every_write_route_of_the_app_is_inspected():
    from fastapi import FastAPI

    app = FastAPI()
    for p in ("/v1/completions", "/invocations", "/v1/messages", "/v2/new", "/v1/training/examples"):
        app.add_api_route(p, lambda: {}, methods=["POST"])
    app.add_api_route("/v1/models", lambda: {}, methods=["GET"])
    assert generation_routes(app) == ["/invocations", "/v1/completions", "/v1/messages", "/v2/new"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/invocations"])
def test_json_nested_1000_deep_is_a_400_not_a_500(catalogue, path):
    app, mw = _mw(catalogue)
    deep = b'{"model": "m", "prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    got = _call(mw, path, deep)
    assert got["status"] == 400 and "nested deeper" in json.loads(got["body"])["error"]["message"]
    assert app.bodies == []


def test_declared_oversized_body_is_refused_before_it_is_read(catalogue):
    app, mw = _mw(catalogue)
    got = _call(mw, "/v1/completions", b"x" * 10, headers=[(b"content-length", str(300 << 20).encode())])
    assert got["status"] == 413 and got["reads"] == 0 and app.bodies == []


def test_streamed_body_is_cut_at_the_cap(catalogue):
    app, mw = _mw(catalogue, max_body=4096)
    got = _call(mw, "/v1/training/examples", b"y" * 40_000, headers=[], chunks=40)
    assert got["status"] == 413
    assert got["reads"] <= 6  # stopped reading just past the cap, not after all 40 chunks
    assert app.bodies == []


def test_malformed_content_length_is_a_400(catalogue):
    app, mw = _mw(catalogue)
    got = _call(mw, "/v1/completions", STEERED, headers=[(b"content-length", b"12x")])
    assert got["status"] == 400 and app.bodies == []
