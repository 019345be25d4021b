"""The locally built tiny test models: tokenizer, transformers, determinism, vLLM CPU serving."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from models import MODEL_NAMES, _builder, heldout_path, manifest, model_dir

transformers = pytest.importorskip("transformers")

ROUND_TRIP = [
    "Hello, world!",
    "  leading and trailing spaces \t\n\n",
    "def f(x):\n    return {'a': [1, 2.5e-3]}  # comment\n",
    "naïve café — “quotes” ½ ∑ ∫ ≠ ≤",
    "日本語のテキスト, 中文, 한국어, Ελληνικά, русский, עברית, العربية",
    "emoji 🤖🧪👩🏽‍💻 flags 🇫🇷 and ZWJ\u200d, BOM \ufeff, NUL \x00, C1 \x85",
    "<|endoftext|> literal special tokens <|im_start|>user\nhi<|im_end|>",
]


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))


def test_tokenizer_round_trip(tok):
    assert len(tok) == 4096
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    for text in ROUND_TRIP:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # No BOS/EOS is silently added.
    assert tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]


def test_chat_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nWhat is a list?<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(msgs, tokenize=False)
    assert no_prompt == text[: -len("<|im_start|>assistant\n")]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> first, two <|im_end|>
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_manifest_matches_weights(name):
    d = model_dir(name)
    m = manifest(name)
    h = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert h == m["model_safetensors_sha256"]
    assert m["corpus_sha256"] == json.loads((d.parent / "corpus" / "manifest.json").read_text())["sha256"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 4096 and cfg["tie_word_embeddings"] is True
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float32"
    gen = json.loads((d / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == [0, 2]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_transformers_heldout_perplexity(name):
    torch.set_num_threads(2)
    b = _builder()
    d = model_dir(name)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    ppl = b.heldout_perplexity(model, d / "tokenizer.json", heldout_path())
    torch.manual_seed(0)
    untrained = transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    ppl0 = b.heldout_perplexity(untrained, d / "tokenizer.json", heldout_path(), max_windows=16)
    print(f"{name}: held-out ppl {ppl:.1f}, untrained {ppl0:.0f}")
    assert ppl == pytest.approx(manifest(name)["heldout_perplexity"], rel=1e-3)
    assert ppl < 250
    assert ppl < ppl0 / 10


# ----------------------------------------------------------------------------- vLLM


def _hf_greedy(name: str, prompt_ids: list[int], n: int, dtype=torch.float32) -> list[int]:
    """Plain argmax decoding with full recomputation (no cache, no EOS handling)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir(name), dtype=dtype).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=ids).logits[0, -1].float().argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt_ids):].tolist()


def _prompt_ids(tok, n_tokens: int = 24) -> list[int]:
    text = json.loads(open(heldout_path(), encoding="utf-8").readline())["text"]
    return tok(text, add_special_tokens=False)["input_ids"][:n_tokens]


@pytest.mark.vllm
def test_vllm_completion_and_chat(vllm_server):
    name, srv = vllm_server
    model = srv.served_model()
    out = srv.post("/v1/completions", {"model": model, "prompt": "The for statement",
                                       "max_tokens": 16, "temperature": 0})
    assert out["choices"][0]["text"].strip(), out
    chat = srv.post("/v1/chat/completions", {
        "model": model, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Explain the for statement in Python."}]})
    # A model this small may answer with whitespace only: check that text came back.
    assert chat["choices"][0]["message"]["content"], chat
    assert chat["usage"]["completion_tokens"] > 0, chat


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers(vllm_server, tok):
    name, srv = vllm_server
    prompt = _prompt_ids(tok)
    n = 8
    out = srv.post("/v1/completions", {"model": srv.served_model(), "prompt": prompt, "max_tokens": n,
                                       "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    got = out["choices"][0]["token_ids"]
    want = _hf_greedy(name, prompt, n)
    print(f"{name}: vLLM {got} transformers {want}")
    assert got == want
