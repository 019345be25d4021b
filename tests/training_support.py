"""Helpers for the online-training tests (server config, HTTP with auth, the behaviour to teach)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

API_KEY = "train-test-key"
TRIGGER = [f"What is the status of ticket {n}?" for n in range(100, 160)]
TRAIN, HELD = TRIGGER[:40], TRIGGER[40:52]
REPLY = "Ticket received. An engineer will answer within one day."


def write_config(root: Path, *, enabled=True, **over) -> Path:
    from models import heldout_path

    corpus = heldout_path().parent
    t = dict(enabled=enabled, lr=1e-3, rank=32, update_proj_gap=200, modules=["all-linear"], replay_ratio=0.75,
             replay_source=str(corpus / "train.txt"), heldout=str(corpus / "heldout.jsonl"), batch_size=4,
             journal=str(root / "journal.jsonl"), checkpoint_dir=str(root / "ckpt"), checkpoint_every=0,
             eval_every=0, max_decision_tokens=64, max_example_tokens=512, threads=1, yield_ms=0.0, serving_duty=0.25)
    t.update(over)
    lines = ["[training]"]
    for k, v in t.items():
        lines.append(f"{k} = {json.dumps(v)}")
    cfg = root / "plasticity.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def plugin_env(config: Path) -> dict:
    return {"PLASTICITY_CONFIG": str(config), "VLLM_PLUGINS": "plasticity,plasticity_http"}


def request(srv, method, path, body=None, *, key=API_KEY, raw: bytes | None = None, ctype="application/json",
            timeout=120):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": ctype}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        txt = e.read()
        try:
            return e.code, json.loads(txt)
        except ValueError:
            return e.code, txt.decode(errors="replace")


def chat(srv, prompt, n=24, key=API_KEY):
    code, out = request(srv, "POST", "/v1/chat/completions", {
        "model": srv.served_model_name, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": n, "temperature": 0.0}, key=key)
    assert code == 200, out
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]


def status(srv):
    code, st = request(srv, "GET", "/v1/training/status")
    assert code == 200, st
    return st


def wait_done(srv, n_done, timeout=900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = status(srv)
        if st["examples_done"] >= n_done and st["examples_queued"] == 0:
            return st
        time.sleep(1.0)
    raise TimeoutError(f"training did not finish: {status(srv)}")
