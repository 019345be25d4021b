#!/usr/bin/env python3
"""Build three tiny, briefly pretrained HF models (+ tokenizer) for tests.

Everything is derived from text shipped with the interpreter (the Python
language reference in ``pydoc_data.topics`` and a fixed list of pure-Python
stdlib modules), so no network or model hub is needed, and training uses a
fixed seed and a fixed step count so that two runs on the same machine give
byte-identical ``model.safetensors`` files.

Layout under ``--out`` (default: ``~/.cache/plasticity/models``, outside any checkout so that
fresh clones on the same machine reuse the builds; ``PLASTICITY_CACHE_DIR`` or ``XDG_CACHE_HOME``
move it; each model's manifest records the hash of its recipe and a mismatch rebuilds it)::

    corpus/      train.txt heldout.txt heldout.jsonl manifest.json
    tokenizer/   tokenizer.json tokenizer_config.json manifest.json
    qwen3-tiny/  config.json model.safetensors generation_config.json
                 tokenizer files, manifest.json
    qwen3_5-tiny/ (same; hybrid Gated DeltaNet + full attention)
    qwen3-tiny-long/ (qwen3-tiny pretrained 1200 steps instead of 300: the merge test's base)

Usage: python scripts/build_test_models.py [--out DIR] [--only qwen3|qwen3_5|qwen3-long] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

# Bump whenever anything below changes the produced artifacts: it is part of
# every build hash, so stale caches are rebuilt instead of silently reused.
SCRIPT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """``$PLASTICITY_CACHE_DIR``, else ``$XDG_CACHE_HOME/plasticity``, else ``~/.cache/plasticity``."""
    env = os.environ.get("PLASTICITY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "plasticity"


DEFAULT_OUT = cache_root() / "models"

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]  # ids 0, 1, 2
VOCAB_SIZE = 4096

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Pure-Python stdlib sources (paths relative to the stdlib dir), sorted.
# ~1.9 MB of code next to ~0.47 MB of reference prose.
STDLIB_FILES = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py",
    "collections/__init__.py", "configparser.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "difflib.py", "dis.py", "enum.py",
    "fractions.py", "functools.py", "gettext.py", "glob.py", "heapq.py",
    "hmac.py", "ipaddress.py", "json/decoder.py", "json/encoder.py",
    "logging/__init__.py", "numbers.py", "optparse.py", "pathlib.py",
    "pickle.py", "platform.py", "pprint.py", "queue.py", "random.py",
    "shlex.py", "shutil.py", "statistics.py", "string.py", "tempfile.py",
    "textwrap.py", "threading.py", "tokenize.py", "traceback.py",
    "urllib/parse.py", "uuid.py", "warnings.py", "weakref.py",
)
DOC_CHARS = 1200      # documents are >= this many chars (a few hundred tokens)
HELDOUT_EVERY = 10    # document i is held out iff i % HELDOUT_EVERY == HELDOUT_EVERY - 1
CHAT_QUESTIONS = (
    "What does the Python reference say about {}?",
    "Explain {} in Python.",
    "Tell me more about {}.",
)

TRAIN = dict(seed=1234, batch=8, seq_len=256, lr=3e-3, warmup=20,
             min_lr_frac=0.1, weight_decay=0.01, betas=(0.9, 0.95), grad_clip=1.0)

MODELS = {
    "qwen3-tiny": dict(
        steps=300,
        config=dict(
            architectures=["Qwen3ForCausalLM"], model_type="qwen3",
            hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            max_position_embeddings=2048, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
    ),
    "qwen3_5-tiny": dict(
        steps=240,
        config=dict(
            architectures=["Qwen3_5ForCausalLM"], model_type="qwen3_5_text",
            hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            # 64: vLLM's CPU GDN kernel rejects 32 ("Unexpected head dim size").
            linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=64, linear_value_head_dim=64,
            linear_conv_kernel_dim=4,
            max_position_embeddings=2048, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.25},
        ),
    ),
}
# The same Qwen3 pretrained 4x longer (held-out perplexity ~51 instead of ~190): the merge test
# needs a base whose chat replies are text and that has learnt enough of its corpus for replay
# not to move two fine-tunes the same way (docs/task-vectors.md, "Merging behaviours").
MODELS["qwen3-tiny-long"] = dict(MODELS["qwen3-tiny"], steps=1200)
# What a build without --only makes (the demo's and most tests' models); the long one is built on
# first use by tests/models.py or with --only qwen3-long (about 400 s more).
DEFAULT_MODELS = ("qwen3-tiny", "qwen3_5-tiny")
SHORT_NAMES = {"qwen3": "qwen3-tiny", "qwen3_5": "qwen3_5-tiny", "qwen3-long": "qwen3-tiny-long"}


def log(msg: str) -> None:
    print(f"[build_test_models] {msg}", flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_hash(obj) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True).encode())


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def build_lock(out: Path):
    """Serialize concurrent builders (e.g. parallel pytest workers)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- corpus

def _split_docs(text: str, min_chars: int = DOC_CHARS) -> list[str]:
    """Greedy-pack blank-line separated paragraphs into documents of >= min_chars."""
    docs, cur = [], []
    size = 0
    for para in text.replace("\r\n", "\n").split("\n\n"):
        if not para.strip():
            continue
        cur.append(para)
        size += len(para) + 2
        if size >= min_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def _chat_docs(key: str, text: str) -> list[str]:
    """A few ChatML samples per reference topic, so chat answers learn to end with <|im_end|>."""
    paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    out = []
    for question, para in zip(CHAT_QUESTIONS, paras):
        out.append(f"{IM_START}user\n{question.format(key)}{IM_END}\n"
                   f"{IM_START}assistant\n{para[:600]}{IM_END}\n")
    return out


def corpus_documents() -> list[str]:
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        docs.extend(_split_docs(topics[key]))
        docs.extend(_chat_docs(key, topics[key]))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in STDLIB_FILES:
        src = (stdlib / rel).read_text(encoding="utf-8")
        docs.extend(f"# {rel}\n{d}" if i == 0 else d for i, d in enumerate(_split_docs(src)))
    return docs


def build_corpus(out: Path, force: bool = False) -> dict:
    cdir = out / "corpus"
    recipe = dict(script_version=SCRIPT_VERSION, files=STDLIB_FILES, doc_chars=DOC_CHARS,
                  heldout_every=HELDOUT_EVERY, python=sys.version.split()[0])
    manifest = read_json(cdir / "manifest.json")
    if (not force and manifest and manifest.get("recipe_hash") == json_hash(recipe)
            and all((cdir / f).exists() for f in ("train.txt", "heldout.txt", "heldout.jsonl"))):
        return manifest

    log("building corpus")
    docs = corpus_documents()
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    cdir.mkdir(parents=True, exist_ok=True)
    # Documents are separated by <|endoftext|>, exactly as they are fed to training.
    sep = f"\n{EOT}\n"
    (cdir / "train.txt").write_text(sep.join(train), encoding="utf-8")
    (cdir / "heldout.txt").write_text(sep.join(heldout), encoding="utf-8")
    with open(cdir / "heldout.jsonl", "w", encoding="utf-8") as f:
        for d in heldout:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    h = hashlib.sha256()
    for name in ("train.txt", "heldout.txt"):
        h.update((cdir / name).read_bytes())
    manifest = dict(recipe, recipe_hash=json_hash(recipe), sha256=h.hexdigest(),
                    train_docs=len(train), heldout_docs=len(heldout),
                    train_chars=sum(map(len, train)), heldout_chars=sum(map(len, heldout)),
                    document_separator=EOT)
    write_json(cdir / "manifest.json", manifest)
    log(f"corpus: {len(train)} train / {len(heldout)} held-out docs, "
        f"{manifest['train_chars'] + manifest['heldout_chars']} chars, sha256 {manifest['sha256'][:12]}")
    return manifest


def read_docs(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split(f"\n{EOT}\n")


def read_heldout_jsonl(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# ------------------------------------------------------------------------ tokenizer

def build_tokenizer(out: Path, corpus: dict, force: bool = False) -> dict:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tdir = out / "tokenizer"
    recipe = dict(script_version=SCRIPT_VERSION, corpus=corpus["sha256"], vocab=VOCAB_SIZE,
                  specials=SPECIAL_TOKENS, template=CHAT_TEMPLATE, tokenizers=tokenizers.__version__)
    manifest = read_json(tdir / "manifest.json")
    if (not force and manifest and manifest.get("recipe_hash") == json_hash(recipe)
            and (tdir / "tokenizer.json").exists()):
        return manifest

    log("training byte-level BPE tokenizer")
    t0 = time.time()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(read_docs(out / "corpus" / "train.txt"), trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]

    tdir.mkdir(parents=True, exist_ok=True)
    tok.save(str(tdir / "tokenizer.json"))
    # Written by hand (not save_pretrained) so the chat template lives in
    # tokenizer_config.json, which both transformers 4.x/5.x and vLLM read.
    write_json(tdir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": EOT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    })
    write_json(tdir / "special_tokens_map.json",
               {"eos_token": IM_END, "pad_token": EOT,
                "additional_special_tokens": [EOT, IM_START, IM_END]})
    manifest = dict(recipe, recipe_hash=json_hash(recipe), vocab_size=tok.get_vocab_size(),
                    sha256=sha256_file(tdir / "tokenizer.json"),
                    token_ids={t: i for i, t in enumerate(SPECIAL_TOKENS)},
                    build_seconds=round(time.time() - t0, 2))
    write_json(tdir / "manifest.json", manifest)
    log(f"tokenizer: vocab {manifest['vocab_size']}, {manifest['build_seconds']} s, "
        f"sha256 {manifest['sha256'][:12]}")
    return manifest


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def token_stream(tok, docs: list[str]) -> list[int]:
    """Documents encoded back to back, each followed by <|endoftext|>."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    return ids


# --------------------------------------------------------------------------- models

def make_config(name: str, vocab_size: int):
    from transformers import AutoConfig

    cfg = dict(MODELS[name]["config"])
    model_type = cfg.pop("model_type")
    eot = SPECIAL_TOKENS.index(EOT)
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, bos_token_id=None,
                                eos_token_id=eot, pad_token_id=eot, dtype="float32", **cfg)


def setup_torch():
    import torch

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    return torch


def windows(ids: list[int], seq_len: int):
    import torch

    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def perplexity(model, data, batch: int = 16) -> float:
    """exp(mean next-token NLL) over non-overlapping windows."""
    import torch

    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = data[i: i + batch]
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
            nll += loss.item()
            count += x[:, 1:].numel()
    return math.exp(nll / count)


def heldout_perplexity(model, tokenizer_json: Path, heldout_jsonl: Path,
                       seq_len: int = TRAIN["seq_len"], max_windows: int | None = None) -> float:
    """The canonical held-out perplexity (also used by tests)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    data = windows(token_stream(tok, read_heldout_jsonl(heldout_jsonl)), seq_len)
    return perplexity(model, data[:max_windows] if max_windows else data)


def model_build_hash(name: str, corpus: dict, tokenizer: dict) -> str:
    import torch
    import transformers

    return json_hash(dict(script_version=SCRIPT_VERSION, spec=MODELS[name], train=TRAIN,
                          corpus=corpus["sha256"], tokenizer=tokenizer["sha256"],
                          torch=torch.__version__, transformers=transformers.__version__))


def build_model(out: Path, name: str, corpus: dict, tokenizer: dict, force: bool = False) -> dict:
    torch = setup_torch()
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, GenerationConfig

    mdir = out / name
    build_hash = model_build_hash(name, corpus, tokenizer)
    manifest = read_json(mdir / "manifest.json")
    if (not force and manifest and manifest.get("build_hash") == build_hash
            and (mdir / "model.safetensors").exists()):
        log(f"{name}: up to date ({mdir})")
        return manifest

    spec, steps = MODELS[name], MODELS[name]["steps"]
    log(f"{name}: pretraining {steps} steps x {TRAIN['batch']} x {TRAIN['seq_len']} tokens")
    t0 = time.time()
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    train = windows(token_stream(tok, read_docs(out / "corpus" / "train.txt")), TRAIN["seq_len"])
    heldout = windows(token_stream(tok, read_heldout_jsonl(out / "corpus" / "heldout.jsonl")),
                      TRAIN["seq_len"])

    torch.manual_seed(TRAIN["seed"])
    config = make_config(name, tok.get_vocab_size())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    init_ppl = perplexity(model, heldout[:32])

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": TRAIN["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=TRAIN["lr"], betas=TRAIN["betas"])

    def lr_at(step: int) -> float:
        if step < TRAIN["warmup"]:
            return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
        frac = (step - TRAIN["warmup"]) / max(1, steps - TRAIN["warmup"])
        return TRAIN["lr"] * (TRAIN["min_lr_frac"]
                              + (1 - TRAIN["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(TRAIN["seed"])
    order = torch.randperm(len(train), generator=gen)
    pos, losses = 0, []
    model.train()
    for step in range(steps):
        if pos + TRAIN["batch"] > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        x = train[order[pos: pos + TRAIN["batch"]]]
        pos += TRAIN["batch"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == steps - 1:
            log(f"{name}: step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({time.time() - t0:.0f} s)")
    train_seconds = time.time() - t0
    ppl = perplexity(model, heldout)
    log(f"{name}: held-out perplexity {ppl:.2f} (untrained {init_ppl:.0f})")

    # Write to a temp dir and swap in, so readers never see half a model.
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    eot, im_end = SPECIAL_TOKENS.index(EOT), SPECIAL_TOKENS.index(IM_END)
    # Base text ends with <|endoftext|>, chat turns with <|im_end|>: stop on both.
    GenerationConfig(bos_token_id=None, eos_token_id=[im_end, eot], pad_token_id=eot,
                     ).save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copy(out / "tokenizer" / f, tmp / f)
    manifest = dict(
        name=name, script_version=SCRIPT_VERSION, build_hash=build_hash,
        architecture=spec["config"]["architectures"][0], n_params=n_params,
        corpus_sha256=corpus["sha256"], tokenizer_sha256=tokenizer["sha256"],
        train=dict(TRAIN, steps=steps), train_steps=steps,
        final_train_loss=round(sum(losses[-10:]) / len(losses[-10:]), 4),
        heldout_perplexity=round(ppl, 3), untrained_heldout_perplexity=round(init_ppl, 1),
        heldout_windows=len(heldout),
        model_safetensors_sha256=sha256_file(tmp / "model.safetensors"),
        train_seconds=round(train_seconds, 1), build_seconds=round(time.time() - t0, 1),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      python=sys.version.split()[0]),
    )
    write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(mdir, ignore_errors=True)
    tmp.rename(mdir)
    log(f"{name}: done in {manifest['build_seconds']} s, model.safetensors sha256 "
        f"{manifest['model_safetensors_sha256'][:12]}")
    return manifest


def build(out: Path = DEFAULT_OUT, only: list[str] | None = None, force: bool = False) -> dict:
    """Build (or reuse) corpus, tokenizer and the requested models; return their manifests."""
    out = Path(out)
    names = only or list(DEFAULT_MODELS)
    with build_lock(out):
        corpus = build_corpus(out, force)
        tokenizer = build_tokenizer(out, corpus, force)
        return {n: build_model(out, n, corpus, tokenizer, force) for n in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache dir (default {DEFAULT_OUT})")
    p.add_argument("--only", choices=sorted(SHORT_NAMES), help="build just one model")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                   help="pretrain N steps instead of the model's default (a better-converged variant for "
                        "experiments; give it its own --out, the tests expect the defaults)")
    args = p.parse_args(argv)
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            p.error("--pretrain-steps must be >= 1")
        for name in ([SHORT_NAMES[args.only]] if args.only else DEFAULT_MODELS):
            MODELS[name]["steps"] = args.pretrain_steps  # part of the build hash: a cached build is not reused
    manifests = build(args.out, [SHORT_NAMES[args.only]] if args.only else None, args.force)
    for name, m in manifests.items():
        log(f"{name}: ppl {m['heldout_perplexity']} loss {m['final_train_loss']} "
            f"sha256 {m['model_safetensors_sha256']} ({args.out / name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
