"""Locate (building on first use) the tiny test models from scripts/build_test_models.py.

    from models import model_dir, heldout_path
    d = model_dir("qwen3-tiny")        # or "qwen3_5-tiny"

The cache dir is ``~/.cache/plasticity/models`` (outside the checkout, so fresh clones on
the same machine reuse the builds; ``PLASTICITY_CACHE_DIR`` moves it) unless the environment
variable ``PLASTICITY_TEST_MODELS_DIR`` points elsewhere. Each model's manifest records the hash of
its recipe; a build whose recipe changed is redone.  A first build takes a
few minutes per model on CPU; later calls only compare the manifest hash.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "build_test_models.py"
MODEL_NAMES = ("qwen3-tiny", "qwen3_5-tiny", "qwen3-tiny-long")


def _builder():
    # scripts/ is not a package: load the script as a module, once.
    mod = sys.modules.get("build_test_models")
    if mod is None:
        spec = importlib.util.spec_from_file_location("build_test_models", _SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["build_test_models"] = mod
        spec.loader.exec_module(mod)
    return mod


def out_dir() -> pathlib.Path:
    env = os.environ.get("PLASTICITY_TEST_MODELS_DIR")
    return pathlib.Path(env) if env else _builder().DEFAULT_OUT


_checked: set[str] = set()


REAL_MODELS = ("smollm2-135m-instruct",)  # pretrained, from PyPI (scripts/build_smollm2.py)
_REPO = pathlib.Path(__file__).resolve().parents[1]


def _real_model_dir(name: str) -> pathlib.Path:
    import subprocess

    out = subprocess.run([sys.executable, str(_REPO / "scripts" / "build_smollm2.py"), "--print-dir"],
                         capture_output=True, text=True, check=True).stdout.strip()
    d = pathlib.Path(out)
    if not (d / "manifest.json").exists():  # built by scripts/setup.sh; here only if it was skipped
        subprocess.run(["bash", str(_REPO / "scripts" / "setup_smollm2.sh")], check=True)
    return d


def model_dir(name: str) -> pathlib.Path:
    """Folder of a built model (HF layout: config.json, model.safetensors, tokenizer...)."""
    if name in REAL_MODELS:
        return _real_model_dir(name)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown test model {name!r}; known: {MODEL_NAMES + REAL_MODELS}")
    if name not in _checked:
        _builder().build(out_dir(), only=[name])
        _checked.add(name)
    return out_dir() / name


def manifest(name: str) -> dict:
    import json

    return json.loads((model_dir(name) / "manifest.json").read_text())


def corpus_dir() -> pathlib.Path:
    if "corpus" not in _checked:
        b = _builder()
        with b.build_lock(out_dir()):
            b.build_corpus(out_dir())
        _checked.add("corpus")
    return out_dir() / "corpus"


def heldout_path() -> pathlib.Path:
    """heldout.jsonl: one {"text": ...} per held-out document (a few hundred tokens each)."""
    return corpus_dir() / "heldout.jsonl"


def heldout_text_path() -> pathlib.Path:
    """heldout.txt: the held-out documents joined by "\\n<|endoftext|>\\n"."""
    return corpus_dir() / "heldout.txt"
