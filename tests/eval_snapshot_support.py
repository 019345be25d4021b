"""A snapshot folder for the local qwen3-tiny, written as the server writes them (for the eval tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models import model_dir

TENSORS = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")


def load_tiny():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()


def make_snapshot(folder: Path, *, fingerprint: str | None = None, tensors=TENSORS, shapes=None,
                  scale: float = 0.05) -> Path:
    """τ = seeded noise on ``tensors`` (f64 deltas, like the server's for float32 weights)."""
    from plasticity.taskvec.files import SafetensorsWriter
    from plasticity.training.snapshots import fingerprint as fp_of

    model = load_tiny()
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(7)
    specs, deltas = [], {}
    for n in tensors:
        shape = tuple((shapes or {}).get(n, params[n].shape if n in params else (4, 4)))
        deltas[n] = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        specs.append((n, torch.float64, shape))
    folder.mkdir(parents=True)
    fp = fingerprint or fp_of(model)
    with SafetensorsWriter(folder / "task_vector.safetensors", specs,
                           {"format": "pt", "plasticity": "task_vector", "model_fingerprint": fp}) as w:
        for n in tensors:
            w.write(n, deltas[n])
    (folder / "meta.json").write_text(json.dumps({"name": folder.name, "model_fingerprint": fp,
                                                  "tensors": len(tensors)}))
    return folder
