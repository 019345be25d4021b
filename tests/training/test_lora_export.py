"""A snapshot as a PEFT LoRA adapter (``plasticity snapshot export NAME --lora``), without a server.

The snapshot is real: qwen3-tiny trained for a few Apollo steps by the project's Trainer and saved
by :class:`Snapshots`, exactly as the server does. The adapter is read back file by file.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from models import model_dir
from test_snapshots import REPLY_A, _train, rig  # noqa: F401  (the fixture)

from plasticity.cli import main
from plasticity.taskvec.files import SafetensorsFile
from plasticity.taskvec.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, REPORT_FILE, RankChoice,
                                     build_adapter, export_snapshot, lora_module, merged_delta)


@pytest.fixture
def trained(rig, tmp_path):  # noqa: F811
    m, tr, snaps, params, tok = rig
    _train(tr, tok, ["What is the status of ticket 7?", "Any news on ticket 12?"], REPLY_A, steps=6)
    snaps.save("a", {})
    tau = SafetensorsFile(tmp_path / "snaps" / "a" / "task_vector.safetensors")
    return tmp_path / "snaps", tau, params


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


def test_full_rank_adapter_reproduces_the_task_vector(trained, tmp_path):
    root, tau, params = trained
    rep = export_snapshot(root, "a", tmp_path / "full", RankChoice(energy=1.0), model_dir=model_dir("qwen3-tiny"))
    merged = merged_delta(tmp_path / "full")
    lora_names = [n for n in tau.names if lora_module(n, tau.tensors[n].shape)]
    assert lora_names and set(merged) <= set(lora_names)
    for n in lora_names:
        d = tau.get(n)
        if d.abs().max() == 0:
            assert n in rep["unchanged"] and n not in merged
            continue
        assert _rel(merged[n], d) < 1e-5, n  # float32 factors of the float64 delta
    assert rep["rel_error_lora_modules"] < 1e-5
    # what the report says is what the files hold
    by_name = {x["name"]: x for x in rep["modules"]}
    for n, got in merged.items():
        assert abs(by_name[n]["rel_error"] - _rel(got, tau.get(n))) < 1e-9


def test_energy_rule_keeps_the_share_and_reports_the_measured_error(trained, tmp_path):
    root, tau, params = trained
    rep = export_snapshot(root, "a", tmp_path / "e90", RankChoice(energy=0.9, max_rank=64))
    merged = merged_delta(tmp_path / "e90")
    sq_err = sq_all = 0.0
    for mod in rep["modules"]:
        n = mod["name"]
        d = tau.get(n).double()
        err = float((merged[n] - d).norm())
        assert abs(err / float(d.norm()) - mod["rel_error"]) < 1e-9
        # Eckart-Young: the error of keeping `energy_kept` of ||d||^2 is the rest, to f32 rounding
        assert abs(mod["rel_error"] - math.sqrt(max(0.0, 1 - mod["energy_kept"]))) < 1e-4
        assert mod["energy_kept"] >= 0.9 - 1e-9 or mod["rank"] == 64
        assert 1 <= mod["rank"] <= min(mod["shape"])
        sq_err += err ** 2
        sq_all += float(d.norm()) ** 2
    left = sum(x["norm"] ** 2 for x in rep["left_out"])
    assert abs(rep["rel_error"] - math.sqrt((sq_err + left) / (sq_all + left))) < 1e-9
    assert rep["ranks"]["max"] <= 64


def test_adapter_files_are_peft_and_vllm_reads_them(trained, tmp_path):
    root, tau, params = trained
    export_snapshot(root, "a", tmp_path / "ad", RankChoice(rank=4))
    cfg = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    report = json.loads((tmp_path / "ad" / REPORT_FILE).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 4
    assert report["snapshot"] == "a" and report["model_fingerprint"]
    with SafetensorsFile(tmp_path / "ad" / ADAPTER_WEIGHTS) as f:
        names = f.names
        for n in names:
            assert n.startswith(PEFT_PREFIX) and (n.endswith(".lora_A.weight") or n.endswith(".lora_B.weight"))
            t = f.get(n)
            assert t.dtype == torch.float32 and 4 in t.shape
    modules = {n[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for n in names}
    assert set(cfg["rank_pattern"]) == modules
    assert set(cfg["target_modules"]) == {m.rsplit(".", 1)[-1] for m in modules}
    from vllm.lora.peft_helper import PEFTHelper

    helper = PEFTHelper.from_dict(cfg)
    for mod in modules:
        assert helper.get_rank_and_scaling(mod) == (4, 1.0)


def test_per_matrix_ranks_are_scaled_one_each(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = {"model.layers.0.mlp.up_proj.weight": (12, 8), "model.layers.0.mlp.down_proj.weight": (8, 12),
              "model.norm.weight": (8,)}
    low = torch.randn(12, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 8, generator=g, dtype=torch.float64)
    deltas = {"model.layers.0.mlp.up_proj.weight": low,
              "model.layers.0.mlp.down_proj.weight": torch.randn(8, 12, generator=g, dtype=torch.float64),
              "model.norm.weight": torch.full((8,), 1e-9, dtype=torch.float64)}
    ad = build_adapter(shapes, deltas.__getitem__, RankChoice(energy=1.0))
    assert ad.config["rank_pattern"] == {"model.layers.0.mlp.up_proj": 2, "model.layers.0.mlp.down_proj": 8}
    assert ad.config["r"] == 8 and ad.config["alpha_pattern"] == ad.config["rank_pattern"]
    assert [x["name"] for x in ad.report["left_out"]] == ["model.norm.weight"]
    from plasticity.taskvec.lora import write_adapter

    write_adapter(ad, tmp_path / "ad")
    merged = merged_delta(tmp_path / "ad")
    for n in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        assert _rel(merged[n], deltas[n]) < 1e-6


def test_cli_export_prints_the_report_and_writes_the_folder(trained, tmp_path, capsys):
    root, tau, params = trained
    out = tmp_path / "cli"
    assert main(["snapshot", "export", "a", "--lora", "--snapshot-dir", str(root), "-o", str(out),
                 "--energy", "0.95", "--max-rank", "16"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["snapshot"] == "a" and shown["ranks"]["max"] <= 16 and 0 <= shown["rel_error"] < 1
    assert (out / ADAPTER_CONFIG).is_file() and (out / ADAPTER_WEIGHTS).is_file() and (out / REPORT_FILE).is_file()
