"""Helpers for the steering tests: the plugin-enabled server, vectors, and a
transformers reference forward with ``scale·v`` added after the same blocks."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from importlib.metadata import entry_points

import numpy as np
import torch

API_KEY = "test-steering-key"
HIDDEN = 256
PROMPTS = [
    "The quick brown fox jumps over the lazy dog and",
    "Once upon a time in a small village there lived",
    "def fibonacci(n):\n    ",
]


def unit_vectors(seed: int, layers, hidden=HIDDEN, norm=1.0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for l in layers:
        v = rng.standard_normal(hidden).astype(np.float32)
        out[l] = (v / np.linalg.norm(v) * norm).astype(np.float32)
    return out


def plain_env() -> dict[str, str]:
    """VLLM_PLUGINS naming every general plugin except ours: vLLM without the plugin."""
    names = [ep.name for ep in entry_points(group="vllm.general_plugins") if ep.name != "plasticity"]
    return {"VLLM_PLUGINS": ",".join(names) or "none"}


def plugin_env(config_path) -> dict[str, str]:
    from plasticity.serve import plugin_env as pe

    env = pe({k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}, str(config_path))
    return {"VLLM_PLUGINS": env["VLLM_PLUGINS"], "PLASTICITY_CONFIG": env["PLASTICITY_CONFIG"]}


def http(srv, method: str, path: str, body=None, key: str | None = API_KEY, timeout=120):
    """(status, json) — never raises on HTTP errors."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(srv.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def complete(srv, prompt_ids, n=12, xargs=None, key=API_KEY, **extra):
    """Greedy completion: (token_ids, chosen-token logprobs)."""
    body = {"model": srv.model, "prompt": prompt_ids, "max_tokens": n, "temperature": 0.0,
            "logprobs": 1, "return_token_ids": True, "ignore_eos": True, **extra}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    code, out = http(srv, "POST", "/v1/completions", body, key=key)
    assert code == 200, out
    ch = out["choices"][0]
    return ch["token_ids"], ch["logprobs"]["token_logprobs"]


class HFReference:
    """transformers forward of the same model, optionally with ``delta[L]`` added
    to the output of block L (every position) — what the server should compute."""

    def __init__(self, model_dir, dtype=torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        self.dtype = dtype

    def ids(self, text: str) -> list[int]:
        return self.tok(text)["input_ids"]

    def greedy(self, ids, n, deltas: dict[int, np.ndarray] | None = None):
        hooks = []
        for l, d in (deltas or {}).items():
            dt = torch.from_numpy(np.asarray(d, np.float32)).to(self.dtype)

            def hook(mod, args, out, dt=dt):
                if isinstance(out, tuple):
                    return (out[0] + dt,) + tuple(out[1:])
                return out + dt

            hooks.append(self.model.model.layers[l].register_forward_hook(hook))
        try:
            ids = list(ids)
            toks, lps = [], []
            with torch.no_grad():
                for _ in range(n):
                    logits = self.model(torch.tensor([ids])).logits[0, -1].float()
                    lp = torch.log_softmax(logits, -1)
                    t = int(lp.argmax())
                    toks.append(t)
                    lps.append(float(lp[t]))
                    ids.append(t)
            return toks, lps
        finally:
            for h in hooks:
                h.remove()


def combine(*terms) -> dict[int, np.ndarray]:
    """Σ scale·v per layer for (scale, {layer: v}) terms, optionally restricted: (scale, dirs, layers)."""
    out: dict[int, np.ndarray] = {}
    for term in terms:
        scale, dirs = term[0], term[1]
        only = term[2] if len(term) > 2 else None
        for l, v in dirs.items():
            if only is not None and l not in only:
                continue
            out[l] = out.get(l, np.zeros_like(v, dtype=np.float64)) + scale * v.astype(np.float64)
    return {l: v.astype(np.float32) for l, v in out.items()}
