"""Control-vector files round-trip (GGUF in the repeng/llama.cpp layout, safetensors)."""

import struct

import numpy as np

from plasticity.steering.files import load_vector_file, read_gguf, save_gguf, save_safetensors


def _dirs():
    rng = np.random.default_rng(0)
    return {1: rng.standard_normal(256).astype(np.float32), 3: rng.standard_normal(256).astype(np.float32)}


def test_gguf_roundtrip_and_layout(tmp_path):
    p = tmp_path / "v.gguf"
    d = _dirs()
    save_gguf(p, d, "qwen3")
    b = p.read_bytes()
    assert b[:4] == b"GGUF" and struct.unpack("<I", b[4:8])[0] == 3
    meta, tensors = read_gguf(p)
    assert meta == {"general.architecture": "controlvector", "controlvector.model_hint": "qwen3",
                    "controlvector.layer_count": 2}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    got, _ = load_vector_file(p)
    assert all(np.array_equal(got[k], d[k]) for k in d)


def test_safetensors_roundtrip(tmp_path):
    p = tmp_path / "v.safetensors"
    d = _dirs()
    save_safetensors(p, d, "qwen3")
    got, meta = load_vector_file(p)
    assert meta["controlvector.model_hint"] == "qwen3"
    assert all(np.array_equal(got[k], d[k]) for k in d)
