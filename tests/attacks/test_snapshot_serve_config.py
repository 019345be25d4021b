"""Bad ``[snapshots]`` sections (snapshots served per request as LoRA adapters): each refused with
the key named, before vLLM starts. And the LoRA slot rule that keeps base requests clean on CPU."""

from __future__ import annotations

import pytest

from plasticity.serve import lora_args
from plasticity.training.adapter_routes import usable_slots
from plasticity.training.config import SnapshotsConfig, load_snapshots, snapshots_from_dict


@pytest.mark.parametrize("sec,msg", [
    ({"serve_max": -1}, "serve_max"),
    ({"serve_max": 65}, "serve_max"),
    ({"serve_max": True}, "serve_max"),
    ({"serve_max": 2.0}, "serve_max"),
    ({"serve_max": "2"}, "serve_max"),
    ({"serve_max_rank": 0}, "serve_max_rank"),
    ({"serve_max_rank": 63}, "serve_max_rank"),
    ({"serve_max_rank": 1024}, "serve_max_rank"),
    ({"serve_energy": 0}, "serve_energy"),
    ({"serve_energy": 1.01}, "serve_energy"),
    ({"serve_energy": float("nan")}, "serve_energy"),
    ({"serve_energy": False}, "serve_energy"),
    ({"serve_path": "/etc"}, "unknown [snapshots] keys"),
], ids=["serve_max_negative", "serve_max_above_64", "serve_max_bool", "serve_max_float", "serve_max_string",
        "rank_zero", "rank_not_a_vllm_rank", "rank_too_big", "energy_zero", "energy_above_one", "energy_nan",
        "energy_bool", "unknown_key"])
def test_bad_snapshots_section(sec, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        snapshots_from_dict(sec)


def test_section_not_a_table():
    with pytest.raises(ValueError, match="must be a table"):
        snapshots_from_dict([1, 2])


def test_plasticity_serve_refuses_a_bad_section_before_vllm(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text("[snapshots]\nserve_max = 99\n")
    with pytest.raises(SystemExit, match="serve_max"):
        lora_args(str(cfg), [])


def test_plasticity_serve_keeps_one_lora_slot_empty(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text("[snapshots]\nserve_max = 3\nserve_max_rank = 16\n")
    assert load_snapshots(cfg) == SnapshotsConfig(serve_max=3, serve_max_rank=16)
    assert lora_args(str(cfg), []) == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]
    # the operator's own LoRA flags win, and serve_max = 0 adds nothing
    assert lora_args(str(cfg), ["--enable-lora", "--max-loras", "3"]) == []
    cfg.write_text("[snapshots]\nserve_max = 0\n")
    assert lora_args(str(cfg), []) == []


@pytest.mark.parametrize("max_loras,serve_max,cpu,want", [
    (3, 2, True, 2), (2, 2, True, 1), (1, 2, True, 0), (2, 2, False, 2), (8, 2, True, 2), (0, 2, True, -1),
])
def test_usable_slots(max_loras, serve_max, cpu, want):
    # on CPU a base token's slot index -1 reads the last slot, which must therefore stay empty
    assert usable_slots(max_loras, serve_max, cpu) == want
