#!/usr/bin/env python3
"""The main job, end to end on the locally built test model, all through one `plasticity serve`
(the real vLLM OpenAI server with the plasticity plugins) and its HTTP API:

1. Steering: register a vector over the admin route and send the same request with and
   without the per-request flag (``vllm_xargs``).
2. Online training: submit examples of a new behaviour (a fixed reply to questions about a
   ticket) to ``POST /v1/training/examples``; the server trains its live weights with Apollo
   (context-frozen, 75% replay) while it keeps answering requests; held-out prompts get the
   reply afterwards, and the forgetting guard's held-out perplexity stays within its threshold.
3. Version control: save the change as a task vector (``POST /v1/snapshots``), roll back to
   the base (the reply is gone, weights bit-identical) and forward to the snapshot again.

Run through `bash scripts/demo.sh` (which sets everything up first).
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # test-model helpers (build on first use)

from models import heldout_path, model_dir  # noqa: E402

TRIGGER = [f"What is the status of ticket {n}?" for n in range(100, 152)]
TRAIN, HELD = TRIGGER[:40], TRIGGER[40:]  # held-out ticket numbers are never trained on
REPLY = "Ticket received. An engineer will answer within one day."
EPOCHS = 4
KEY = "demo-key"


class PlasticityServer:
    """`plasticity serve` (vllm serve + our plugins) as a subprocess; see tests/vllm_server.py."""

    def __new__(cls, model, config):
        from vllm_server import VLLMServer

        class _Srv(VLLMServer):
            def command(self):
                return [str(ROOT / ".venv/bin/plasticity"), "serve", self.model, "--config", str(config),
                        "--dtype", self.dtype, "--gpu-memory-utilization", "0.2", "--max-model-len", "1024",
                        "--host", "127.0.0.1", "--port", str(self.port), "--api-key", KEY]

        return _Srv(model, dtype="float32")


def write_config(work: pathlib.Path) -> pathlib.Path:
    corpus = heldout_path().parent
    (work / "vectors").mkdir()
    cfg = work / "plasticity.toml"
    cfg.write_text(f"""[steering]
admin = true
vectors_dir = "vectors"

[training]
enabled = true
lr = 1e-3
rank = 32
replay_ratio = 0.75          # general text from the pretraining corpus in every batch
replay_source = {json.dumps(str(corpus / "train.txt"))}
heldout = {json.dumps(str(corpus / "heldout.jsonl"))}
batch_size = 4
journal = "journal.jsonl"
snapshot_dir = "snapshots"
eval_every = 20              # held-out perplexity of general text every 20 steps
guard_every = 40             # forgetting guard: every 40 steps, a rise of more than
guard_threshold = 0.10       # 10% over the base pauses training and rolls back
""")
    return cfg


def call(srv, path, body=None, method="POST", raw=None, ctype="application/json"):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(srv.url + path, data=data, method=method,
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read() or b"null")


def chat(srv, model, prompt, n=16, **extra):
    out = call(srv, "/v1/chat/completions", {"model": model, "max_tokens": n, "temperature": 0,
                                             "messages": [{"role": "user", "content": prompt}], **extra})
    return out["choices"][0]["message"]["content"]


def behaviour(srv, model) -> int:
    return sum(chat(srv, model, p, n=24).strip().startswith(REPLY[:20]) for p in HELD)


def steering(srv, model) -> None:
    import torch
    import transformers

    print("\n== 1. Steering, toggled per request")
    # A vector anyone can see working: the direction of the output embedding of one word,
    # added after the last two blocks, pushes the model to say it.
    d = srv.model
    tok = transformers.AutoTokenizer.from_pretrained(d)
    lm = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    direction = lm.lm_head.weight[tok(" function")["input_ids"][0]].detach()
    direction = (direction / direction.norm()).tolist()
    del lm
    out = call(srv, "/v1/steering/vectors", {"name": "say-function", "values": {"2": direction, "3": direction}})
    print(f"registered vector {out['name']!r} on layers {out['layers']}")
    prompt = "The for statement"
    base = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    plain = call(srv, "/v1/completions", base)["choices"][0]["text"]
    steered = call(srv, "/v1/completions", dict(base, vllm_xargs={"steer": "say-function", "steer_scale": 300}))
    print(f"unsteered: {prompt!r} -> {plain!r}")
    print(f"steered  : {prompt!r} -> {steered['choices'][0]['text']!r}")
    print("           (extra_body={'vllm_xargs': {'steer': 'say-function', 'steer_scale': 300}}; "
          "the residual norm of this model is ~300)")
    again = call(srv, "/v1/completions", base)["choices"][0]["text"]
    print(f"unsteered again, nothing leaked into other requests: {again == plain}")


def training(srv, model) -> None:
    print("\n== 2. Online training of the live weights while the server keeps serving")
    st0 = call(srv, "/v1/training/status", method="GET")
    ppl0 = st0["heldout_ppl"]
    print(f"before: {HELD[0]!r} -> {chat(srv, model, HELD[0])!r}")
    print(f"held-out prompts with the reply: {behaviour(srv, model)}/{len(HELD)}; "
          f"held-out perplexity (general text) {ppl0:.2f}")
    lines = [json.dumps({"context": [{"role": "user", "content": p}], "decision": REPLY})
             for _ in range(EPOCHS) for p in TRAIN]
    out = call(srv, "/v1/training/examples", raw="\n".join(lines).encode(), ctype="application/jsonl")
    print(f"POST /v1/training/examples: {len(out['ids'])} examples journaled ({len(TRAIN)} prompts x {EPOCHS})")

    # requests keep being answered while the trainer steps the same weights
    served, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            t = time.time()
            chat(srv, model, "Explain for in Python.", n=24)
            served.append(time.time() - t)

    th = threading.Thread(target=client, daemon=True)
    th.start()
    t0, last = time.time(), -1
    while True:
        st = call(srv, "/v1/training/status", method="GET")
        if st["step"] != last and (st["step"] // 20 != last // 20 or st["examples_queued"] == 0):
            print(f"  step {st['step']:4d}  loss {st['last_loss'] or float('nan'):.3f} (75% of it general text)  "
                  f"held-out ppl {st['heldout_ppl']:.2f} (step {st['heldout_step']})  "
                  f"queued {st['examples_queued']:3d}  requests served meanwhile {len(served)}")
            last = st["step"]
        if st["examples_done"] >= st0["examples_done"] + len(lines) and st["examples_queued"] == 0:
            break
        if st.get("paused"):
            raise SystemExit(f"training paused (forgetting guard?): {st.get('guard')}")
        if time.time() - t0 > 1200:
            raise SystemExit(f"training did not finish in 20 minutes: {st}")
        time.sleep(2)
    stop.set()
    th.join(120)
    t1 = time.time()
    while st["heldout_step"] is None or st["heldout_step"] < st["step"]:  # the eval of the last step
        if time.time() - t1 > 120:
            break
        time.sleep(1)
        st = call(srv, "/v1/training/status", method="GET")
    print(f"trained {st['step'] - st0['step']} steps in {time.time() - t0:.0f} s; "
          f"{len(served)} requests answered during training (median {sorted(served)[len(served) // 2]:.2f} s); "
          f"Apollo state {st['optimizer_state_bytes'] / 2**20:.2f} MB (AdamW would hold "
          f"{st['adamw_state_bytes'] / 2**20:.1f} MB)")
    print(f"after : {HELD[0]!r} -> {chat(srv, model, HELD[0], n=24)!r}")
    hits = behaviour(srv, model)
    ppl1 = st["heldout_ppl"]
    print(f"held-out prompts with the reply: {hits}/{len(HELD)}; held-out perplexity {ppl0:.2f} -> {ppl1:.2f} "
          f"(step {st['heldout_step']}) "
          f"({100 * (ppl1 / ppl0 - 1):+.1f}%; guard: {st['guard']['trips']} trips at +"
          f"{100 * st['guard']['threshold']:.0f}%)")


def version_control(srv, model) -> None:
    print("\n== 3. The change as a task vector: save, roll back, roll forward")
    snap = call(srv, "/v1/snapshots", {"name": "ticket-reply"})
    print(f"POST /v1/snapshots: {snap['name']!r}, |tau| = {snap['norm']:.3f} over {snap['tensors']} tensors, "
          f"exact round trip: {snap['exact_roundtrip']}")
    call(srv, "/v1/rollback", {"to": "base"})
    print(f"rolled back to base : {HELD[0]!r} -> {chat(srv, model, HELD[0])!r}  "
          f"({behaviour(srv, model)}/{len(HELD)} with the reply)")
    call(srv, "/v1/rollback", {"to": "ticket-reply"})
    print(f"rolled to snapshot  : {HELD[0]!r} -> {chat(srv, model, HELD[0], n=24)!r}  "
          f"({behaviour(srv, model)}/{len(HELD)})")


def main() -> int:
    d = model_dir("qwen3-tiny")
    work = pathlib.Path(tempfile.mkdtemp(prefix="plasticity-demo-"))
    cfg = write_config(work)
    # relative paths in the config (journal, snapshots, vectors) are relative to its folder
    print(f"== plasticity serve {d.name} --config {cfg}")
    with PlasticityServer(d, cfg) as srv:
        print(f"healthy after {srv.startup_seconds:.0f} s at {srv.url}")
        model = call(srv, "/v1/models", method="GET")["data"][0]["id"]
        steering(srv, model)
        training(srv, model)
        version_control(srv, model)
    print(f"\nfiles: {work} (journal.jsonl, snapshots/ticket-reply/, vectors/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
