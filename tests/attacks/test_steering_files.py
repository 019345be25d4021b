"""Hostile control-vector files: each must raise SteeringError with a clear message."""

import struct

import numpy as np
import pytest

from plasticity.steering.files import load_vector_file, save_gguf, save_safetensors
from plasticity.steering.spec import SteeringError


def _good(tmp_path, name="v.gguf"):
    p = tmp_path / name
    save_gguf(p, {1: np.ones(8, np.float32), 2: np.full(8, 2, np.float32)}, "qwen3")
    return p


def test_bad_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(SteeringError, match="bad magic"):
        load_vector_file(p)


def test_truncated(tmp_path):
    p = _good(tmp_path)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SteeringError, match="truncated|outside the file"):
        load_vector_file(p)


def test_huge_string_length(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60))
    with pytest.raises(SteeringError, match="truncated or corrupt"):
        load_vector_file(p)


def test_huge_counts(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0))
    with pytest.raises(SteeringError, match="implausible"):
        load_vector_file(p)


def test_tensor_offset_outside_file(tmp_path):
    p = _good(tmp_path)
    b = bytearray(p.read_bytes())
    i = b.index(b"direction.2") + len("direction.2") + 4 + 8 + 4  # -> offset field
    b[i:i + 8] = struct.pack("<Q", 1 << 40)
    p.write_bytes(bytes(b))
    with pytest.raises(SteeringError, match="outside the file"):
        load_vector_file(p)


def test_wrong_architecture(tmp_path):
    p = tmp_path / "arch.gguf"
    p.write_bytes(_good(tmp_path, "y.gguf").read_bytes().replace(b"controlvector", b"llamallamalla", 1))
    with pytest.raises(SteeringError, match="not 'controlvector'"):
        load_vector_file(p)


def test_nan_direction(tmp_path):
    p = tmp_path / "nan.safetensors"
    save_safetensors(p, {1: np.array([1.0, np.nan], np.float32)})
    with pytest.raises(SteeringError, match="NaN or Inf"):
        load_vector_file(p)


def test_two_d_direction(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "2d.safetensors"
    save_file({"direction.1": np.ones((2, 4), np.float32)}, str(p))
    with pytest.raises(SteeringError, match="1-D"):
        load_vector_file(p)


def test_mixed_lengths(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(p, {1: np.ones(4, np.float32), 2: np.ones(5, np.float32)})
    with pytest.raises(SteeringError, match="different lengths"):
        load_vector_file(p)


def test_foreign_tensor_name(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "f.safetensors"
    save_file({"model.layers.0.weight": np.ones(4, np.float32)}, str(p))
    with pytest.raises(SteeringError, match="unexpected tensor"):
        load_vector_file(p)


def test_corrupt_safetensors(tmp_path):
    p = tmp_path / "c.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    with pytest.raises(SteeringError, match="cannot read safetensors"):
        load_vector_file(p)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "v.pt"
    p.write_bytes(b"x")
    with pytest.raises(SteeringError, match="unknown vector file type"):
        load_vector_file(p)
