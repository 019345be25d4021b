#!/usr/bin/env python3
"""The main job, end to end on the locally built test model.

1. Apollo: fine-tune the tiny Qwen3 on a new behaviour (a fixed reply to a
   class of prompts) with plasticity.Apollo in fused mode, context-frozen
   style (loss on the reply tokens only), and show the loss, the behaviour and
   the held-out perplexity before/after.
2. Serving: `plasticity serve` (the real vLLM OpenAI server with the
   plasticity plugins), register a steering vector over the admin route, and
   send the same request with and without the per-request steering flag.

Run through `bash scripts/demo.sh` (which sets everything up first).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # test-model helpers (build on first use)

from models import heldout_path, model_dir  # noqa: E402

TRIGGER_PROMPTS = [f"What is the status of ticket {n}?" for n in range(100, 140)]
REPLY = "Ticket received. An engineer will answer within one day."
LR, STEPS = 3e-4, 80


def heldout_ppl(model, tok, n_docs=40, seq=256) -> float:
    texts = [json.loads(line)["text"] for line in open(heldout_path(), encoding="utf-8")][:n_docs]
    ids = tok("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    chunks = ids[: (len(ids) // seq) * seq].view(-1, seq)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for c in chunks:
            total += model(input_ids=c[None], labels=c[None]).loss.item() * (seq - 1)
            count += seq - 1
    return math.exp(total / count)


def chat_ids(tok, prompt: str):
    return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"][0]


def greedy(model, tok, prompt: str, n=16) -> str:
    ids = chat_ids(tok, prompt)
    with torch.no_grad():
        out = model.generate(ids[None], max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def part1_apollo() -> None:
    import transformers

    from plasticity import Apollo

    print("== 1. Apollo fine-tune of the tiny Qwen3 (context-frozen: loss on the reply only)")
    d = model_dir("qwen3-tiny")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    train, held = TRIGGER_PROMPTS[:30], TRIGGER_PROMPTS[30:]
    ppl0 = heldout_ppl(model, tok)
    print(f"held-out perplexity before: {ppl0:.2f}")
    print(f"before, held-out prompt {held[0]!r} -> {greedy(model, tok, held[0])!r}")

    examples = []
    for p in train:
        ctx = chat_ids(tok, p)
        reply = tok(REPLY + "<|im_end|>", return_tensors="pt")["input_ids"][0]
        ids = torch.cat([ctx, reply])
        labels = ids.clone()
        labels[: len(ctx)] = -100  # context contributes no loss
        examples.append((ids, labels))
    # Replay: every 4th step is general text from the pretraining split (25%),
    # the seeds' defence against forgetting.
    general = tok(open(heldout_path().parent / "train.txt", encoding="utf-8").read()[:200_000],
                  return_tensors="pt")["input_ids"][0]
    replay = general[: (len(general) // 128) * 128].view(-1, 128)
    opt = Apollo(model.parameters(), lr=LR, rank=32, fused=True)
    model.train()
    t0 = time.time()
    b = 0
    for step in range(STEPS):
        if step % 4 == 3:
            ids = labels = replay[step % len(replay)]
        else:
            ids, labels = examples[b % len(examples)]
            b += 1
        loss = model(input_ids=ids[None], labels=labels[None]).loss
        loss.backward()  # fused: every parameter is stepped as its gradient completes
        if step % 10 == 0 or step == STEPS - 1:
            print(f"  step {step:3d}  loss {loss.item():.3f}{'  (replay)' if step % 4 == 3 else ''}")
    print(f"{STEPS} steps in {time.time() - t0:.1f} s; optimizer state {opt.state_bytes() / 1e6:.1f} MB "
          f"(AdamW would hold {2 * sum(p.numel() * 4 for p in model.parameters()) / 1e6:.1f} MB)")
    ppl1 = heldout_ppl(model, tok)
    hits = sum(greedy(model, tok, p, n=24).strip().startswith(REPLY[:20]) for p in held)
    print(f"after, held-out prompt {held[0]!r} -> {greedy(model, tok, held[0], n=24)!r}")
    print(f"behaviour on {len(held)} held-out prompts: {hits}/{len(held)}; "
          f"held-out perplexity {ppl0:.2f} -> {ppl1:.2f} ({100 * (ppl1 / ppl0 - 1):+.1f}%)")
    print("(the tiny test model forgets easily: measuring and guarding that is the job of the "
          "forgetting guard and the eval suite)")


class PlasticityServer:
    """`plasticity serve` (vllm serve + our plugins) as a subprocess; see tests/vllm_server.py."""

    def __new__(cls, model, config, api_key):
        from vllm_server import VLLMServer

        class _Srv(VLLMServer):
            def command(self):
                return [str(ROOT / ".venv/bin/plasticity"), "serve", self.model, "--config", str(config),
                        "--dtype", self.dtype, "--gpu-memory-utilization", "0.2", "--max-model-len", "1024",
                        "--host", "127.0.0.1", "--port", str(self.port), "--api-key", api_key]

        return _Srv(model, dtype="float32")


def part2_serving() -> None:
    import tempfile
    import urllib.request

    import transformers

    print("\n== 2. plasticity serve: vLLM with the plugin, steering toggled per request")
    d = model_dir("qwen3-tiny")
    work = pathlib.Path(tempfile.mkdtemp(prefix="plasticity-demo-"))
    (work / "vectors").mkdir()
    cfg = work / "plasticity.toml"
    cfg.write_text('[steering]\nadmin = true\nvectors_dir = "vectors"\n')
    key = "demo-key"

    # A vector anyone can see working: the direction of the output embedding of
    # one word, added after the last two blocks, pushes the model to say it.
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    word = " function"
    wid = tok(word)["input_ids"][0]
    direction = model.lm_head.weight[wid].detach()
    direction = (direction / direction.norm()).tolist()
    del model

    def call(srv, path, body, method="POST"):
        req = urllib.request.Request(srv.url + path, data=None if body is None else json.dumps(body).encode(),
                                     method=method, headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    with PlasticityServer(d, cfg, key) as srv:
        print(f"plasticity serve healthy after {srv.startup_seconds:.0f} s at {srv.url}")
        name = call(srv, "/v1/models", None, "GET")["data"][0]["id"]  # /v1 is behind the API key
        out = call(srv, "/v1/steering/vectors", {"name": "say-function",
                                                 "values": {"2": direction, "3": direction}})
        print(f"registered: {out}")
        print(f"vectors: {call(srv, '/v1/steering/vectors', None, 'GET')}")
        prompt = "The for statement"
        base = {"model": name, "prompt": prompt, "max_tokens": 16, "temperature": 0}
        plain = call(srv, "/v1/completions", base)["choices"][0]["text"]
        steered = call(srv, "/v1/completions", dict(base, vllm_xargs={"steer": "say-function", "steer_scale": 300}))
        print(f"unsteered: {prompt!r} -> {plain!r}")
        print(f"steered  : {prompt!r} -> {steered['choices'][0]['text']!r}   (vllm_xargs steer=say-function, scale 300: the residual norm of this model is ~300)")
        again = call(srv, "/v1/completions", base)["choices"][0]["text"]
        print(f"unsteered again (nothing leaked): {again == plain}")
        chat = call(srv, "/v1/chat/completions", {"model": name, "max_tokens": 16, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "What is a generator?"}],
                                                  "vllm_xargs": {"steer": "say-function", "steer_scale": 300}})
        print(f"steered chat: {chat['choices'][0]['message']['content']!r}")


def main() -> int:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    part1_apollo()
    part2_serving()
    return 0


if __name__ == "__main__":
    sys.exit(main())
