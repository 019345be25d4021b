#!/usr/bin/env python3
"""Which layers and scale make a steering vector visible and keep the replies coherent? (offline sweep)

    .venv/bin/python scripts/steering_sweep.py [--model smollm2-135m-instruct] [--method mean_diff]
        [--layers 4-9,6-11,8-13] [--scales 2,3,4]

Extracts a happy-vs-sad vector from contrastive pairs (the same pairs scripts/demo.py sends to the
server), then for every layer range x scale steers four neutral prompts at +scale and -scale
(transformers, greedy, 40 tokens) and prints: a mood score (happy minus sad words), and the
unsteered model's mean NLL of the steered reply (coherence: the base answers score ~1.5; a reply
above ~3 is usually broken). The demo's layers and scale come from this table (docs/steering.md).
"""
import argparse
import pathlib
import re
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from models import model_dir
from plasticity.steering import extract as ex
from plasticity.experiments.steering_vs_training import Steer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="smollm2-135m-instruct")
ap.add_argument("--method", default="mean_diff")
ap.add_argument("--layers", default="4-9,6-11,8-13")
ap.add_argument("--scales", default="2,3,4")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
D = model_dir(a.model)
tok = AutoTokenizer.from_pretrained(D)
m = AutoModelForCausalLM.from_pretrained(D, dtype=torch.float32).eval()
N = m.config.num_hidden_layers

SUFFIXES = ["I", "Today", "The", "My day", "Well,", "Honestly,", "When I", "This morning", "Life", "It",
            "Yesterday", "Right now", "The weather", "Everything", "People", "I think", "Work", "My friends",
            "Tonight", "So far"]


def turn(persona, suffix):
    return (f"<|im_start|>user\nYou are an extremely {persona} person. Tell me about your day.<|im_end|>\n"
            f"<|im_start|>assistant\n{suffix}")


pairs = [(turn("happy, joyful", s), turn("sad, miserable", s)) for s in SUFFIXES]
PROMPTS = ["Tell me about your weekend.", "Describe the city you live in.", "What do you think about Mondays?",
           "Write one sentence about the sea."]
HAPPY = r"\b(happy|joy\w*|wonderful|great|love\w*|amazing|excit\w*|delight\w*|cheer\w*|smil\w*|fantastic|beautiful|fun|glad|bright)\b"
SAD = r"\b(sad\w*|miser\w*|lonely|alone|cry\w*|tears?|gloom\w*|depress\w*|dark|tired|hopeless|pain\w*|grey|gray|sorrow\w*|empty|awful)\b"


def gen(q, n=40):
    ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=n, do_sample=False, repetition_penalty=1.1)
    return ids, out[0, ids.shape[1]:]


def nll(ids, new):
    """Unsteered model's mean NLL of the generated tokens: a coherence check."""
    full = torch.cat([ids[0], new])[None]
    with torch.no_grad():
        lg = m(input_ids=full).logits[0, ids.shape[1] - 1:-1]
    return torch.nn.functional.cross_entropy(lg, new).item()


def score(texts):
    h = sum(len(re.findall(HAPPY, t, re.I)) for t in texts)
    s = sum(len(re.findall(SAD, t, re.I)) for t in texts)
    return h - s


method = a.method
t = time.time()
dirs_all = ex.extract(m, tok, pairs, method=method, layers=list(range(1, N)))
print(f"extracted {method} in {time.time()-t:.0f}s; norms", {l: round(float((torch.tensor(v)**2).sum().sqrt()), 2) for l, v in list(dirs_all.items())[::5]}, flush=True)
base = [gen(q) for q in PROMPTS]
texts = [tok.decode(n, skip_special_tokens=True) for _, n in base]
print(f"unsteered: score {score(texts)} nll {sum(nll(i, n) for i, n in base) / len(base):.2f} | {texts[0][:90]!r}",
      flush=True)
layer_sets = {r: range(int(r.split("-")[0]), int(r.split("-")[1]) + 1) for r in a.layers.split(",")}
scales = [float(x) for x in a.scales.split(",")]
rows = []
for name, ls in layer_sets.items():
    for sc in scales:
        res = {}
        for sign in (+1, -1):
            with Steer(m, {l: dirs_all[l] for l in ls}, sign * sc):
                outs = [gen(q) for q in PROMPTS]
            texts = [tok.decode(n, skip_special_tokens=True) for _, n in outs]
            coh = sum(nll(i, n) for i, n in outs) / len(outs)
            res[sign] = (score(texts), coh, texts[0][:90])
        rows.append((name, sc, res))
        print(f"layers {name:6s} scale {sc:5.1f}: + score {res[1][0]:3d} nll {res[1][1]:.2f} | - score {res[-1][0]:3d} "
              f"nll {res[-1][1]:.2f} | + {res[1][2]!r} | - {res[-1][2]!r}", flush=True)
print(f"total {time.time()-t:.0f}s")
