"""Train a steering vector into the weights, through a running plasticity server.

1. With the vector on (``vllm_xargs`` steer/steer_scale), sample a reply (temperature 1,
   seeded, a new sample each epoch) for every training prompt: training toward samples of
   the steered distribution distils the distribution, not just its argmax.
2. Submit (prompt → steered reply) as context-frozen training examples; the server trains
   the *unsteered* live weights toward them with Apollo, and the client waits.
3. Measure, on held-out prompts, KL(steered ‖ unsteered) before and after: a Monte-Carlo
   estimate over continuations y *sampled* from the steered model for each prompt x
   (greedy ones would bias it: the estimator needs y ~ p_steered),
   ``mean_t [log p_steered(y_t | x, y_<t) − log p_unsteered(y_t | x, y_<t)]``, teacher-forced
   with vLLM's ``prompt_logprobs`` (the steered log-probabilities are taken once, before
   training, so "after" compares the trained unsteered model with the original steered one).
4. With ``until`` (``--until-kl-ratio``), repeat 1-3 with new samples, up to ``max_rounds`` rounds,
   until KL(after) ≤ until · KL(before).
5. Optionally remove the vector from the server (``--drop``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from plasticity.http.client import ClientError, call


ServerError = ClientError  # what train-in raises: an HTTP failure, or training that did not finish


class Client:
    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 300):
        self.url, self.key, self.timeout = url.rstrip("/"), api_key, timeout
        self.model = model or self.call("GET", "/v1/models")["data"][0]["id"]

    def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, ctype="application/json"):
        return call(self.url + path, method, body, api_key=self.key, timeout=self.timeout, raw=raw, ctype=ctype)[1]

    def tokenize(self, prompt) -> list[int]:
        body = {"model": self.model}
        if isinstance(prompt, list):
            body.update(messages=prompt, add_generation_prompt=True)
        else:
            body.update(prompt=prompt, add_special_tokens=False)
        return self.call("POST", "/tokenize", body)["tokens"]

    def generate_ids(self, ids: list[int], n: int, xargs: dict | None, seed: int | None = None) -> list[int]:
        """Greedy continuation, or a sample at temperature 1 when ``seed`` is given."""
        body = {"model": self.model, "prompt": ids, "max_tokens": n, "temperature": 0.0,
                "logprobs": 0, "return_tokens_as_token_ids": True}
        if seed is not None:
            body.update(temperature=1.0, seed=int(seed))
        if xargs:
            body["vllm_xargs"] = xargs
        out = self.call("POST", "/v1/completions", body)["choices"][0]
        return [int(t.split(":", 1)[1]) for t in out["logprobs"]["tokens"]]

    def token_logprobs(self, ids: list[int], start: int, xargs: dict | None) -> list[float]:
        """log p(ids[t] | ids[:t]) for t ≥ start, teacher-forced."""
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        if xargs:
            body["vllm_xargs"] = xargs
        plp = self.call("POST", "/v1/completions", body)["choices"][0]["prompt_logprobs"]
        return [plp[t][str(ids[t])]["logprob"] for t in range(start, len(ids))]

    def detokenize(self, ids: list[int]) -> str:
        return self.call("POST", "/detokenize", {"model": self.model, "tokens": ids})["prompt"]


def read_prompts(path) -> list:
    """JSONL (``{"prompt": text | messages}`` or a bare string per line) or plain text (one per line)."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if str(path).endswith(".jsonl"):
            try:
                doc = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{i + 1}: invalid JSON ({e})") from None
            p = doc.get("prompt") if isinstance(doc, dict) else doc
            if not (isinstance(p, str) and p) and not (isinstance(p, list) and p):
                raise ValueError(f"{path}:{i + 1}: 'prompt' must be a non-empty string or chat messages")
            out.append(p)
        else:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def kl_estimate(steered: list[list[float]], unsteered: list[list[float]]) -> float:
    """Mean over all continuation tokens of log p_s − log p_u (≥ 0 in expectation)."""
    num = sum(s - u for ss, us in zip(steered, unsteered) for s, u in zip(ss, us))
    n = sum(len(ss) for ss in steered)
    return num / n if n else float("nan")


def steer_args(vector: str, scale: float, layers=None) -> dict:
    xs = {"steer": vector, "steer_scale": scale}
    if layers:
        xs["steer_layers"] = list(layers)
    return xs


def steered_samples(client: Client, xs: dict, prompts: list, max_tokens: int, samples: int = 2) -> list:
    """(ids, prompt length, steered log-probs of the continuation) for sampled steered continuations."""
    held = []
    for i, p in enumerate(prompts):
        ids = client.tokenize(p)
        for k in range(samples):
            y = client.generate_ids(ids, max_tokens, xs, seed=10_000 + 97 * i + k)
            if y:
                full = ids + y
                held.append((full, len(ids), client.token_logprobs(full, len(ids), xs)))
    return held


def kl_to_unsteered(client: Client, held: list) -> float:
    """KL(steered ‖ the live unsteered model) over ``steered_samples``."""
    return kl_estimate([h[2] for h in held], [client.token_logprobs(f, s, None) for f, s, _ in held])


def train_in(client: Client, vector: str, scale: float, prompts: list, heldout: list, *, max_tokens: int = 24,
             epochs: int = 2, samples: int = 2, layers=None, wait_s: float = 1800, drop: bool = False,
             until: float | None = None, max_rounds: int = 1, log=print) -> dict:
    """``epochs`` passes of fresh steered samples per round; with ``until`` (a KL ratio in (0, 1)),
    rounds go on until KL_after / KL_before ≤ ``until`` or ``max_rounds`` rounds are done."""
    if until is not None and not (0 < until < 1):
        raise ValueError(f"until must be a KL ratio in (0, 1), got {until}")
    if max_rounds < 1 or epochs < 1:
        raise ValueError("epochs and max_rounds must be >= 1")
    xs = steer_args(vector, scale, layers)
    # held-out: steered continuations and their steered log-probs, before anything changes
    held = steered_samples(client, xs, heldout, max_tokens, samples)
    kl_before = kl_to_unsteered(client, held)
    log(f"KL(steered || unsteered) on {len(held)} held-out samples before: {kl_before:.4f} nats/token")
    st0 = client.call("GET", "/v1/training/status")
    t0 = time.time()
    n_examples, kls = 0, []
    for r in range(max_rounds):
        # training data: steered replies to the training prompts, new samples every epoch
        examples = []
        for e in range(r * epochs, (r + 1) * epochs):
            for i, p in enumerate(prompts):
                ids = client.tokenize(p)
                y = client.generate_ids(ids, max_tokens, xs, seed=1000 * e + i)
                if y:
                    examples.append({"context": p, "decision": client.detokenize(y), "eos": False})
        st1 = client.call("GET", "/v1/training/status")
        body = "\n".join(json.dumps(e) for e in examples).encode()
        client.call("POST", "/v1/training/examples", raw=body, ctype="application/jsonl")
        n_examples += len(examples)
        target = st1["examples_done"] + len(examples)
        while True:
            st = client.call("GET", "/v1/training/status")
            if st["examples_done"] >= target and st["examples_queued"] == 0:
                break
            if time.time() - t0 > wait_s:
                raise ServerError(f"training did not finish in {wait_s} s: {st}")
            if st.get("paused"):
                raise ServerError("training is paused (forgetting guard or operator); not waiting")
            time.sleep(1.0)
        kls.append(kl_to_unsteered(client, held))
        log(f"KL(steered || trained, unsteered) after round {r + 1} ({n_examples} examples): {kls[-1]:.4f} nats/token")
        if until is None or not (kl_before > 0 and math.isfinite(kl_before)) or kls[-1] <= until * kl_before:
            break
    kl_after = kls[-1]
    if drop:
        client.call("DELETE", f"/v1/steering/vectors/{vector}")
    return {"vector": vector, "scale": scale, "train_prompts": len(prompts), "examples": n_examples,
            "epochs": epochs * len(kls), "rounds": len(kls), "kl_rounds": kls, "until": until,
            "heldout_samples": len(held), "kl_before": kl_before, "kl_after": kl_after,
            "kl_ratio": kl_after / kl_before if kl_before and math.isfinite(kl_before) else None,
            "train_seconds": time.time() - t0, "steps": st["step"] - st0["step"],
            "heldout_ppl": st.get("heldout_ppl"), "dropped": drop}
