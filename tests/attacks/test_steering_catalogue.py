"""Vectors that must never enter the catalogue, and one bad file that must not stop the server.

Before the fix a vector with finite but huge values (3e38) answered 400 yet stayed registered, and
from then on ``GET /v1/steering/vectors`` answered 400 to everyone; names such as ``none`` or
``..`` were accepted; ``"1"`` and ``" 1"`` were the same layer; and one corrupt file in
``vectors_dir`` stopped the start-up."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest

from plasticity.steering.catalogue import Catalogue, directions_from_values
from plasticity.steering.config import SteeringConfig
from plasticity.steering.files import save_safetensors
from plasticity.steering.spec import SteeringError, parse_xargs

HIDDEN = 4


class _Engine:
    def __init__(self):
        self.registered = {}

    async def collective_rpc(self, method, args=()):
        if method == "plasticity_register_vector":
            self.registered[args[0]] = args[1]
        elif method == "plasticity_delete_vector":
            self.registered.pop(args[0], None)
        return [{"ok": True}]


def _cat(**cfg):
    eng = _Engine()
    return Catalogue(eng, SteeringConfig(**cfg), {"hidden_size": HIDDEN, "num_layers": 3, "dtype": "float32"}), eng


def _list_json(cat):
    # what GET /v1/steering/vectors serialises: must always be valid JSON
    return json.loads(json.dumps([e.to_json() for e in cat.entries.values()], allow_nan=False))


@pytest.mark.parametrize("value", [3e38, 1e30, 1e7])
def test_huge_finite_vector_is_refused_before_anything_registers(value):
    cat, eng = _cat()
    with pytest.raises(SteeringError, match="norm|overflow"):
        asyncio.run(cat.add("huge", directions_from_values({"1": [value] * HIDDEN}), "inline"))
    assert cat.entries == {} and eng.registered == {}
    assert _list_json(cat) == []


def test_a_vector_at_scale_that_would_overflow_f16_is_refused_per_request():
    eng = _Engine()
    cat = Catalogue(eng, SteeringConfig(max_abs_scale=1000.0), {"hidden_size": HIDDEN, "num_layers": 3,
                                                                   "dtype": "float16"})
    asyncio.run(cat.add("v", {1: np.full(HIDDEN, 100.0, np.float32)}, "inline"))
    assert cat.resolve({"steer": "v", "steer_scale": 2}).names == ("v",)
    with pytest.raises(SteeringError, match="overflow"):
        cat.resolve({"steer": "v", "steer_scale": 900})


@pytest.mark.parametrize("name", ["none", "off", "None", "OFF", ".", "..", "a\n", "a\r\n", "a b", "a/b", "",
                                  "é", "x" * 65])
def test_reserved_or_malformed_vector_names_are_refused(name):
    cat, eng = _cat()
    with pytest.raises(SteeringError, match="invalid vector name"):
        asyncio.run(cat.add(name, {1: np.ones(HIDDEN, np.float32)}, "inline"))
    assert eng.registered == {}


@pytest.mark.parametrize("key", [" 1", "1 ", "+1", "01", "1_000", "\uff14", "\u0661", "1.0", "1e0", "-1", ""])
def test_layer_keys_use_one_strict_grammar(key):
    with pytest.raises(SteeringError):
        directions_from_values({key: [1.0] * HIDDEN})


def test_one_and_space_one_are_not_silently_merged():
    with pytest.raises(SteeringError):
        directions_from_values({"1": [1.0] * HIDDEN, " 1": [2.0] * HIDDEN})


@pytest.mark.parametrize("values", [[True] * HIDDEN, ["1"] * HIDDEN, [None] * HIDDEN, [[1.0]] * HIDDEN])
def test_vector_values_are_json_numbers_only(values):
    with pytest.raises(SteeringError):
        directions_from_values({"1": values})


@pytest.mark.parametrize("xargs", [
    {"steer": "a", "steer_scale": "\uff14"}, {"steer": "a", "steer_scale": "1_000"},
    {"steer": "a", "steer_scale": "\u0664"}, {"steer": "a", "steer_layers": "\u0661"},
    {"steer": "a", "steer_layers": "1_0"}, {"steer": "a", "steer_scale": "0x10"},
    {"steer": "a", "steer_layers": "1.0"}, {"steer": "a", "steer_scale": True},
])
def test_steering_flag_numbers_use_one_strict_grammar(xargs):
    with pytest.raises(SteeringError):
        parse_xargs(xargs)


def test_one_corrupt_or_escaping_file_does_not_stop_start_up(tmp_path, caplog):
    vecs = tmp_path / "vectors"
    vecs.mkdir()
    save_safetensors(vecs / "good.safetensors", {1: np.ones(HIDDEN, np.float32)})
    (vecs / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    (vecs / "corrupt.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    outside = tmp_path / "outside.safetensors"
    save_safetensors(outside, {1: np.ones(HIDDEN, np.float32)})
    (vecs / "escape.safetensors").symlink_to(outside)
    save_safetensors(vecs / "none.safetensors", {1: np.ones(HIDDEN, np.float32)})  # a reserved name
    cat, eng = _cat(vectors_dir=vecs)
    with caplog.at_level(logging.ERROR, logger="vllm.plasticity.steering"):
        skipped = asyncio.run(cat.load_folder())
    assert sorted(cat.entries) == ["good"] and sorted(eng.registered) == ["good"]
    named = sorted(s.split(":")[0] for s in skipped)
    assert named == ["corrupt.gguf", "corrupt.safetensors", "escape.safetensors", "none.safetensors"]
    assert all(n in caplog.text for n in named)


def test_error_messages_are_short_and_hold_no_server_path(tmp_path):
    from plasticity.http.errors import private_dir, public_message

    private_dir(tmp_path)
    msg = public_message(f"{tmp_path}/secret/vectors/a.gguf: bad magic " + "x" * (1 << 20))
    assert str(tmp_path) not in msg and "a.gguf" in msg and len(msg) < 500
