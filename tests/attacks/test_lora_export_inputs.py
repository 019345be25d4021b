"""Hostile or impossible ``plasticity snapshot export --lora`` requests: each is refused with a clear
message (exit 2 from the command line), and no adapter folder, complete or partial, is left behind."""

from __future__ import annotations

import json

import pytest
import torch

from models import model_dir

from plasticity.cli import main
from plasticity.taskvec.files import save_file
from plasticity.taskvec.lora import LoraExportError, RankChoice, export_snapshot

UP, NORM = "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"


def _snapshot(root, name="a", tensors=None, meta=None):
    g = torch.Generator().manual_seed(1)
    tensors = tensors if tensors is not None else {UP: torch.randn(12, 8, generator=g, dtype=torch.float64) * 1e-3}
    d = root / name
    d.mkdir(parents=True)
    save_file(d / "task_vector.safetensors", tensors, {"format": "pt"})
    (d / "meta.json").write_text(json.dumps(meta if meta is not None else {"name": name, "model": ""}))
    return root


def _refused(capsys, tmp_path, root, name, *flags, msg):
    out = tmp_path / "out"
    assert main(["snapshot", "export", name, "--lora", "--snapshot-dir", str(root), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert msg in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "a partial folder was left"


def test_unknown_snapshot(tmp_path, capsys):
    root = _snapshot(tmp_path / "snaps")
    _refused(capsys, tmp_path, root, "nope", msg="unknown snapshot 'nope'")


@pytest.mark.parametrize("name", ["../snaps/a", "a/../a", "/etc", "..", ".hidden", "base", "a\x00b", "x" * 65])
def test_path_or_reserved_word_as_the_name(tmp_path, capsys, name):
    root = _snapshot(tmp_path / "snaps")
    _refused(capsys, tmp_path, root, name, msg="bad snapshot name")


@pytest.mark.parametrize("flags,msg", [
    (["--rank", "0"], "rank 0"),
    (["--rank", "-3"], "rank -3"),
    (["--rank", "9"], "above min(out, in) = 8"),
    (["--energy", "0"], "energy 0.0"),
    (["--energy", "1.5"], "energy 1.5"),
    (["--energy", "-0.5"], "energy -0.5"),
    (["--energy", "nan"], "energy nan"),
    (["--energy", "0.9", "--max-rank", "0"], "max_rank 0"),
    (["--max-left-out", "2"], "max_left_out 2"),
], ids=["rank_zero", "rank_negative", "rank_above_min_side", "energy_zero", "energy_above_one", "energy_negative",
        "energy_nan", "max_rank_zero", "max_left_out_above_one"])
def test_impossible_rank_rules(tmp_path, capsys, flags, msg):
    root = _snapshot(tmp_path / "snaps")
    _refused(capsys, tmp_path, root, "a", *flags, msg=msg)


def test_rank_and_energy_together_is_a_usage_error(tmp_path, capsys):
    root = _snapshot(tmp_path / "snaps")
    with pytest.raises(SystemExit) as e:
        main(["snapshot", "export", "a", "--lora", "--snapshot-dir", str(root), "-o", str(tmp_path / "o"),
              "--rank", "2", "--energy", "0.9"])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_snapshot_of_another_model(tmp_path, capsys):
    # qwen3-tiny has no 12 x 8 up_proj: the adapter would not fit the model it claims to be for
    root = _snapshot(tmp_path / "snaps")
    _refused(capsys, tmp_path, root, "a", "--model", str(model_dir("qwen3-tiny")), msg="is from another model")


def test_most_of_the_delta_outside_lora_is_refused(tmp_path, capsys):
    t = {UP: torch.full((12, 8), 1e-4, dtype=torch.float64), NORM: torch.full((8,), 1.0, dtype=torch.float64)}
    root = _snapshot(tmp_path / "snaps", tensors=t)
    _refused(capsys, tmp_path, root, "a", msg="tensors LoRA cannot carry hold")


def test_non_finite_delta_in_the_file(tmp_path, capsys):
    bad = torch.zeros(12, 8, dtype=torch.float64)
    bad[3, 4] = float("nan")
    root = _snapshot(tmp_path / "snaps", tensors={UP: bad})
    _refused(capsys, tmp_path, root, "a", msg="NaN")


def test_all_zero_delta_has_nothing_to_export(tmp_path, capsys):
    root = _snapshot(tmp_path / "snaps", tensors={UP: torch.zeros(12, 8, dtype=torch.float64)})
    _refused(capsys, tmp_path, root, "a", msg="no adapter to export")


@pytest.mark.parametrize("meta", ["[1, 2]", "{not json", "\xff\xfe"], ids=["not_object", "not_json", "not_utf8"])
def test_unreadable_metadata(tmp_path, capsys, meta):
    root = _snapshot(tmp_path / "snaps")
    (root / "a" / "meta.json").write_bytes(meta.encode("latin-1"))
    _refused(capsys, tmp_path, root, "a", msg="meta.json")


def test_truncated_task_vector_file(tmp_path, capsys):
    root = _snapshot(tmp_path / "snaps")
    p = root / "a" / "task_vector.safetensors"
    p.write_bytes(p.read_bytes()[:50])
    _refused(capsys, tmp_path, root, "a", msg="snapshot 'a'")


def test_existing_output_folder_is_not_overwritten(tmp_path):
    root = _snapshot(tmp_path / "snaps")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(LoraExportError, match="exists"):
        export_snapshot(root, "a", out, RankChoice(rank=2))
    assert (out / "keep").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep"]
