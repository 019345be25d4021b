"""Hostile snapshots for `plasticity eval --model DIR --snapshot FOLDER`: each exits with status 2 and
a clear message before anything is evaluated; the snapshot's meta.json is left as it was and no
report folder is written."""

from __future__ import annotations

import argparse

import pytest

from eval_snapshot_support import TENSORS, make_snapshot
from models import model_dir


def _cli(argv):
    from plasticity.eval.cli import add_parser

    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(argv)
    return args.func(args)


def _another_models(d):
    return make_snapshot(d, fingerprint="0" * 32)


def _unknown_tensor(d):
    return make_snapshot(d, tensors=(TENSORS[0], "model.layers.9.mlp.up_proj.weight"))


def _wrong_shape(d):
    return make_snapshot(d, shapes={TENSORS[0]: (8, 8)})


def _no_task_vector(d):
    make_snapshot(d)
    (d / "task_vector.safetensors").unlink()
    return d


def _meta_not_json(d):
    make_snapshot(d)
    (d / "meta.json").write_text("{not json")
    return d


def _truncated_task_vector(d):
    make_snapshot(d)
    p = d / "task_vector.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    return d


def _no_attached_tests(d):
    return make_snapshot(d)


CASES = {
    "snapshot_from_another_model": (_another_models, True, "another model"),
    "tensor_not_in_model": (_unknown_tensor, True, "not in the model"),
    "tensor_shape_mismatch": (_wrong_shape, True, "has shape [8, 8]"),
    "missing_task_vector": (_no_task_vector, True, "not a snapshot folder"),
    "meta_not_json": (_meta_not_json, True, "unreadable meta.json"),
    "truncated_task_vector": (_truncated_task_vector, True, "task_vector"),
    "no_tests_attached_and_none_given": (_no_attached_tests, False, "no tests attached"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_snapshot_exit_2_nothing_written(case, tmp_path, capsys):
    build, with_tests, msg = CASES[case]
    snap = build(tmp_path / "S")
    meta_before = (snap / "meta.json").read_bytes()
    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir("qwen3-tiny")), "--snapshot", str(snap), "--out", str(out),
            "--no-progress", "--no-plots"] + (["--tests", "ticket-reply", "--max-tokens", "2"] if with_tests else [])
    assert _cli(argv) == 2
    assert msg in capsys.readouterr().err
    assert (snap / "meta.json").read_bytes() == meta_before and not out.exists()


@pytest.mark.parametrize("name", ["a/../b", "a?x=1", "a b", "base", ".x"])
def test_server_snapshot_name_must_be_whole(name):
    # the name check matched a prefix only ("a/../b" passed as "a"); it is the server's fullmatch rule now
    from plasticity.eval.snapshot import ServerSnapshot, SnapshotEvalError

    with pytest.raises(SnapshotEvalError, match="not a snapshot name"):
        ServerSnapshot("http://127.0.0.1:9", name, None)
