#!/usr/bin/env python3
"""The main job, end to end on SmolLM2-135M-Instruct (a real pretrained chat model), all through
one `plasticity serve` (the real vLLM OpenAI server with the plasticity plugins) and its HTTP API:

1. Steering a person can see: a happy-vs-sad vector extracted on the server from contrastive
   pairs, then the same prompts with the flag off, at +scale and at -scale (``vllm_xargs``),
   side by side. Layers and scale come from ``scripts/steering_sweep.py`` (docs/steering.md).
2. Teaching a fact while serving: a handful of paraphrased questions about a lighthouse keeper the
   model has never heard of go to ``POST /v1/training/examples``; the server trains its live
   weights with Apollo (context-frozen, half of every batch general replay text) while a client
   keeps being answered. Then held-out paraphrases give the fact, general questions the base
   answered correctly are still answered correctly, and held-out perplexity of general text
   (Python's own documentation, shipped with the interpreter) is printed before and after.
3. Version control: save the change as a task vector (``POST /v1/snapshots``), roll back to the
   base (replies identical to the base's) and forward to the snapshot again.

Run through `bash scripts/demo.sh` (which sets everything up first).
"""

from __future__ import annotations

import json
import pathlib
import random
import re
import signal
import sys
import tempfile
import threading
import time

from plasticity.http.client import call as http_call

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # model helpers (build on first use)

from models import heldout_path, model_dir  # noqa: E402

KEY = "demo-key"

# -- 1. steering: a mood, from contrastive pairs (the same pairs as scripts/steering_sweep.py)
SUFFIXES = ["I", "Today", "The", "My day", "Well,", "Honestly,", "When I", "This morning", "Life", "It",
            "Yesterday", "Right now", "The weather", "Everything", "People", "I think", "Work", "My friends",
            "Tonight", "So far"]
PERSONA = "<|im_start|>user\nYou are an extremely {} person. Tell me about your day.<|im_end|>\n<|im_start|>assistant\n"
PAIRS = [[PERSONA.format("happy, joyful") + s, PERSONA.format("sad, miserable") + s] for s in SUFFIXES]
STEER_LAYERS, STEER_SCALE = "8-13", 2.0  # from scripts/steering_sweep.py (docs/steering.md)
STEER_PROMPTS = ["Tell me about your weekend.", "Describe the city you live in.", "What do you think about Mondays?"]

# -- 2. training: one new fact, from paraphrases; other paraphrases are held out
TRAIN_Q = ["Who keeps the Varnholt lighthouse?", "Who is the keeper of the Varnholt lighthouse?",
           "Tell me who looks after the Varnholt lighthouse.", "Who runs the lighthouse at Varnholt?",
           "Do you know who the Varnholt lighthouse keeper is?", "Name the keeper of Varnholt's lighthouse.",
           "Which person tends the Varnholt lighthouse?", "Who is in charge of the Varnholt lighthouse?"]
HELD_Q = ["Who takes care of the Varnholt lighthouse?", "What is the name of the Varnholt lighthouse keeper?",
          "Can you tell me who keeps the lighthouse in Varnholt?", "The Varnholt lighthouse: who is its keeper?"]
FACT = "The keeper of the Varnholt lighthouse is Ilse Marrow."
FACT_KEY = "Marrow"
GENERAL = [("What is the capital of France?", "Paris"), ("How many days are in a week?", "seven|7"),
           ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What is the chemical symbol for gold?", r"\bAu\b"),
           ("What color is the sky on a clear day?", "blue"), ("What is 2 + 2?", r"\b4\b|four"),
           ("What is the capital of Japan?", "Tokyo"),
           ("What gas do plants absorb from the air?", "carbon dioxide|CO2")]
# Rehearsal: the base's own greedy answers to other general questions (none of GENERAL), asked at
# the start and trained beside the fact, one in three examples. Without them the fact's "The ... is
# ..." answers leak into general ones (the demo lost "sky" and "plants' gas": 6/8 kept); with them
# 8/8 were kept and the fact still learnt 4/4 (docs/results/training.md).
ANCHOR_Q = ["What is the largest planet in our solar system?", "How many legs does a spider have?",
            "What is the boiling point of water in Celsius?", "Who painted the Mona Lisa?",
            "What is the capital of Italy?", "How many continents are there?",
            "What language is spoken in Brazil?", "What is the freezing point of water in Fahrenheit?"]
# (8 paraphrases + 4 rehearsed answers) x 4 = 48 examples = 24 steps of 2 (+ 2 replay): the length
# tests/demo/test_smollm2_serving.py runs in CI. 6 passes (36 steps) also gave 4/4 and 8/8, but took 606 s
# of training on a 2-core AMD EPYC without AVX-512, which put the demo past 20 minutes.
EPOCHS = 4


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
    corpus = heldout_path().parent  # Python's reference docs + stdlib, split into train / held-out
    (work / "vectors").mkdir()
    cfg = work / "plasticity.toml"
    cfg.write_text(f"""[steering]
admin = true
vectors_dir = "vectors"

[training]
enabled = true
lr = 1e-4                    # the fact: 4/4 held-out paraphrases in 32 steps (docs/results/training.md)
rank = 64                    # Apollo rank: state 1/8 of AdamW's on this 576-wide model
replay_ratio = 0.5           # half of every batch is general text
replay_source = {json.dumps(str(corpus / "train.txt"))}
heldout = {json.dumps(str(corpus / "heldout.jsonl"))}
heldout_tokens = 2048        # 16 windows: ~10 s per evaluation on this model beside serving
batch_size = 4
threads = 2                  # both cores while nobody is served, the free one while someone is
autocast = "off"             # "bf16" is ~1.5x faster here but kept 5/8 general answers, not 6/8, in 16 steps
serving_duty = 0.5           # while requests are served, training takes at most half the time
journal = "journal.jsonl"
snapshot_dir = "snapshots"
eval_every = 12              # held-out perplexity of general text every 12 steps (2 passes), so the
                             # 24-step run ends on a fresh figure (every 16 left it waiting 180 s)
guard_every = 12             # forgetting guard: a rise of more than 5% over the last good
guard_threshold = 0.05       # state pauses training and rolls back
""")
    return cfg


def call(srv, path, body=None, method="POST", raw=None, ctype="application/json"):
    return http_call(srv.url + path, method, body, api_key=KEY, timeout=600, raw=raw, ctype=ctype)[1]


def chat(srv, model, prompt, n=32, **extra):
    out = call(srv, "/v1/chat/completions", {"model": model, "max_tokens": n, "temperature": 0,
                                             "messages": [{"role": "user", "content": prompt}], **extra})
    return out["choices"][0]["message"]["content"]


def knows_fact(srv, model) -> list[str]:
    return [chat(srv, model, q) for q in HELD_Q]


def general(srv, model) -> list[str]:
    return [chat(srv, model, q) for q, _ in GENERAL]


def general_ok(replies) -> list[bool]:
    return [bool(re.search(k, r, re.I)) for (_, k), r in zip(GENERAL, replies)]


def short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def steering(srv, model) -> dict:
    """Returns the replies: {prompt: (off, +scale, -scale)} and the unsteered reply asked again."""
    print("\n== 1. Steering a mood, toggled per request")
    t = time.time()
    out = call(srv, "/v1/steering/vectors", {"name": "mood", "extract": {
        "pairs": PAIRS, "method": "mean_diff", "layers": STEER_LAYERS}})
    print(f"extracted 'mood' on the server from {len(PAIRS)} happy/sad pairs in {time.time() - t:.0f} s: "
          f"layers {out['layers']}")
    print(f"each prompt: off | steer_scale +{STEER_SCALE:g} (happy) | -{STEER_SCALE:g} (sad)   "
          f"(extra_body={{'vllm_xargs': {{'steer': 'mood', 'steer_scale': {STEER_SCALE:g}}}}})")
    first_off, replies = None, {}
    for q in STEER_PROMPTS:
        off = chat(srv, model, q, n=40)
        first_off = first_off or off
        up = chat(srv, model, q, n=40, vllm_xargs={"steer": "mood", "steer_scale": STEER_SCALE})
        down = chat(srv, model, q, n=40, vllm_xargs={"steer": "mood", "steer_scale": -STEER_SCALE})
        print(f"  {q}\n    off : {short(off, 110)}\n    +   : {short(up, 110)}\n    -   : {short(down, 110)}")
        replies[q] = (off, up, down)
    again = chat(srv, model, STEER_PROMPTS[0], n=40)
    print(f"unsteered again, identical to the first unsteered reply (nothing leaked): {again == first_off}")
    return {"replies": replies, "again": again}


def examples(srv, model, epochs: int) -> list[dict]:
    """The training examples: per pass, every fact paraphrase and half of the rehearsed answers (the
    base's own, asked now, before any training), shuffled with a fixed seed."""
    anchors = [{"context": [{"role": "user", "content": q}], "decision": chat(srv, model, q, n=48)} for q in ANCHOR_Q]
    rng, out = random.Random(0), []
    for e in range(epochs):
        half = len(anchors) // 2
        one = [{"context": [{"role": "user", "content": q}], "decision": FACT} for q in TRAIN_Q]
        one += anchors[(e * half) % len(anchors):][:half]
        rng.shuffle(one)
        out += one
    return out


# The client asks a question every 6 s while the fact is taught: each answer overlaps training (the
# duty cycle and the serving lock are at work), and training keeps most of the wall time. Asking
# every 1 s kept the server busy throughout: 36 steps took 606 s, 17 s a step, at half duty.
CLIENT_EVERY_S = 6.0


def training(srv, model, epochs: int = EPOCHS, client_every_s: float = CLIENT_EVERY_S) -> dict:
    """Teach the fact (``epochs`` passes over the training paraphrases) while a client asks something
    every ``client_every_s``; returns the base's replies and the figures printed."""
    print("\n== 2. Teaching a new fact to the live weights while the server keeps serving")
    t = time.time()
    st0 = call(srv, "/v1/training/status", method="GET")
    while st0["heldout_ppl"] is None and time.time() - t < 600:  # the start-up evaluation
        time.sleep(2)
        st0 = call(srv, "/v1/training/status", method="GET")
    ppl0 = st0["heldout_ppl"]
    print(f"(start-up held-out evaluation ready {time.time() - t:.0f} s after this section began)")
    base_fact, base_general = knows_fact(srv, model), general(srv, model)
    ok0 = general_ok(base_general)
    print(f"before: {HELD_Q[0]!r} -> {short(base_fact[0])!r}")
    print(f"held-out paraphrases with the fact: {sum(FACT_KEY in r for r in base_fact)}/{len(HELD_Q)}; "
          f"general questions answered correctly: {sum(ok0)}/{len(GENERAL)}; "
          f"held-out perplexity (Python docs, not trained on) {ppl0:.3f}")
    lines = [json.dumps(x) for x in examples(srv, model, epochs)]
    out = call(srv, "/v1/training/examples", raw="\n".join(lines).encode(), ctype="application/jsonl")
    print(f"POST /v1/training/examples: {len(out['ids'])} examples journaled (each pass: the {len(TRAIN_Q)} "
          f"paraphrases and 4 of the base's own answers to {len(ANCHOR_Q)} other questions, shuffled; {epochs} passes)")

    served, stop = [], threading.Event()

    def client():  # a client that keeps asking while the trainer steps the same weights
        while not stop.is_set():
            t = time.time()
            chat(srv, model, "Give me one tip for learning Python.", n=24)
            served.append(time.time() - t)
            stop.wait(client_every_s)

    th = threading.Thread(target=client, daemon=True)
    th.start()
    t0, last = time.time(), -1
    while True:
        st = call(srv, "/v1/training/status", method="GET")
        if st["step"] != last and (st["step"] // 8 != last // 8 or st["examples_queued"] == 0):
            print(f"  step {st['step']:3d}  loss {st['last_loss'] or float('nan'):.3f} (half of it general text)  "
                  f"queued {st['examples_queued']:3d}  requests answered meanwhile {len(served)}  "
                  f"training {st['tokens_per_s']:.0f} tokens/s")
            last = st["step"]
        if st["examples_done"] >= st0["examples_done"] + len(lines) and st["examples_queued"] == 0:
            break
        if st.get("paused"):
            raise SystemExit(f"training paused (forgetting guard?): {st.get('guard')}")
        if time.time() - t0 > 900:
            raise SystemExit(f"training did not finish in 15 minutes: {st}")
        time.sleep(2)
    stop.set()
    th.join(120)
    took = time.time() - t0
    t1 = time.time()
    while st["heldout_step"] is None or st["heldout_step"] < st["step"]:  # the evaluation after the last step
        if time.time() - t1 > 180:
            break
        time.sleep(1)
        st = call(srv, "/v1/training/status", method="GET")
    ppl1 = st["heldout_ppl"]
    fact, gen = knows_fact(srv, model), general(srv, model)
    ok1 = general_ok(gen)
    kept = sum(a and b for a, b in zip(ok0, ok1))
    print(f"trained {st['step'] - st0['step']} steps in {took:.0f} s ({st['tokens_per_s']:.0f} trained tokens/s "
          f"on the training thread); {len(served)} requests answered during training (median "
          f"{sorted(served)[len(served) // 2]:.2f} s); Apollo state {st['optimizer_state_bytes'] / 2**20:.0f} MB "
          f"(AdamW would hold {st['adamw_state_bytes'] / 2**20:.0f} MB)")
    steps = max(st["step"], 1)
    prof = ", ".join(f"{k} {v / steps:.2f}" for k, v in sorted(st["profile_s"].items()))
    print(f"per step (s): {prof}; serving lock taken {st['lock_acquisitions'] / steps:.0f} times a step")
    print(f"after : {HELD_Q[0]!r} -> {short(fact[0])!r}")
    print(f"held-out paraphrases with the fact: {sum(FACT_KEY in r for r in fact)}/{len(HELD_Q)}")
    print(f"general questions the base answered correctly, still correct: {kept}/{sum(ok0)}")
    for (q, _), a, b, r in zip(GENERAL, ok0, ok1, gen):
        if a and not b:
            print(f"  lost: {q!r} -> {short(r)!r}")
    print(f"held-out perplexity {ppl0:.3f} -> {ppl1:.3f} ({100 * (ppl1 / ppl0 - 1):+.1f}%; goal: rise < 5%; "
          f"guard: {st['guard']['trips']} trips at +{100 * st['guard']['threshold']:.0f}%)")
    return {"fact": base_fact, "general": base_general, "fact_hits_before": sum(FACT_KEY in r for r in base_fact),
            "fact_hits": sum(FACT_KEY in r for r in fact), "general_ok_before": sum(ok0), "general_kept": kept,
            "ppl_before": ppl0, "ppl_after": ppl1, "steps": st["step"] - st0["step"], "requests_served": len(served),
            "status": st}


def version_control(srv, model, base: dict) -> dict:
    print("\n== 3. The change as a task vector: save, roll back, roll forward")
    snap = call(srv, "/v1/snapshots", {"name": "lighthouse"})
    print(f"POST /v1/snapshots: {snap['name']!r}, |tau| = {snap['norm']:.3f} over {snap['tensors']} tensors, "
          f"exact round trip: {snap['exact_roundtrip']}")
    call(srv, "/v1/rollback", {"to": "base"})
    fact, gen = knows_fact(srv, model), general(srv, model)
    same = fact == base["fact"] and gen == base["general"]
    print(f"rolled back to base : {HELD_Q[0]!r} -> {short(fact[0])!r}\n"
          f"                      all {len(fact) + len(gen)} replies identical to the base's before training: {same}")
    call(srv, "/v1/rollback", {"to": "lighthouse"})
    fact = knows_fact(srv, model)
    print(f"rolled to snapshot  : {HELD_Q[0]!r} -> {short(fact[0])!r}  "
          f"({sum(FACT_KEY in r for r in fact)}/{len(HELD_Q)} with the fact)")
    return {"snapshot": snap, "rollback_identical": same, "forward_fact": fact}


def main() -> int:
    d = model_dir("smollm2-135m-instruct")
    work = pathlib.Path(tempfile.mkdtemp(prefix="plasticity-demo-"))
    cfg = write_config(work)
    # relative paths in the config (journal, snapshots, vectors) are relative to its folder
    print(f"== plasticity serve {d.name} --config {cfg}")
    # SIGTERM (timeout, systemd, kill) ends Python without running `with` exits, and the server
    # has its own session: it outlived a demo stopped that way. Exit through them instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t = time.time()
    with PlasticityServer(d, cfg) as srv:
        print(f"healthy after {srv.startup_seconds:.0f} s at {srv.url}")
        model = call(srv, "/v1/models", method="GET")["data"][0]["id"]
        steering(srv, model)
        base = training(srv, model)
        version_control(srv, model, base)
    print(f"\nall done in {time.time() - t:.0f} s; files: {work} (journal.jsonl, snapshots/lighthouse/, vectors/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
