"""A short fine-tune of the locally built Qwen3: Apollo ends within 10% of AdamW.

Same model, data, order, learning rate and step count for both; only the
optimizer differs. The data is held-out corpus text the model was not
pretrained on, so both have something to learn.
"""

import json

import pytest
import torch

from models import heldout_path, model_dir
from plasticity import Apollo

transformers = pytest.importorskip("transformers")

STEPS = 60
LR = 1e-3


def _batches(tok, n_steps, batch=4, seq=128):
    texts = [json.loads(line)["text"] for line in open(heldout_path(), encoding="utf-8")]
    ids = tok("\n\n".join(texts[:60]), return_tensors="pt")["input_ids"][0]
    chunks = ids[: (len(ids) // seq) * seq].view(-1, seq)
    g = torch.Generator().manual_seed(0)
    order = torch.randint(0, len(chunks), (n_steps, batch), generator=g)
    return [chunks[o] for o in order]


def _finetune(make_opt):
    torch.manual_seed(0)
    d = model_dir("qwen3-tiny")
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model.train()
    opt = make_opt(model)
    losses = []
    for x in _batches(tok, STEPS):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_apollo_loss_within_ten_percent_of_adamw():
    torch.set_num_threads(2)
    adamw = _finetune(lambda m: torch.optim.AdamW(m.parameters(), lr=LR, eps=1e-6, weight_decay=0.0))
    apollo = _finetune(lambda m: Apollo(m.parameters(), lr=LR, rank=32, update_proj_gap=200))
    end_adamw = sum(adamw[-10:]) / 10
    end_apollo = sum(apollo[-10:]) / 10
    start = sum(adamw[:3]) / 3
    print(f"start {start:.3f}  AdamW end {end_adamw:.3f}  Apollo end {end_apollo:.3f}")
    assert end_adamw < start - 0.3, "AdamW did not learn: the comparison would be empty"
    assert end_apollo <= 1.10 * end_adamw, f"Apollo {end_apollo:.3f} vs AdamW {end_adamw:.3f}"
