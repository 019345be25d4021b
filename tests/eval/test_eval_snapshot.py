"""`plasticity eval --model DIR --snapshot FOLDER`: τ is added to the model in memory, the figures are
appended to the snapshot's meta.json, and a later run without --tests reruns the attached tests.
(The server form is in test_snapshot_serving.py.)"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from eval_snapshot_support import TENSORS, load_tiny, make_snapshot
from models import heldout_path, model_dir

from plasticity.eval import behaviour as bh


def _cli(argv):
    from plasticity.eval.cli import add_parser

    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    texts = bh.read_texts(heldout_path())[:3]
    p = tmp_path_factory.mktemp("held") / "held.jsonl"
    p.write_text("".join(json.dumps({"text": t[:600]}) + "\n" for t in texts))
    return p


def test_eval_local_snapshot_applies_tau_and_records(tmp_path, held, capsys):
    torch.set_num_threads(1)
    snap = make_snapshot(tmp_path / "A")
    M = str(model_dir("qwen3-tiny"))
    common = ["--heldout-seq", "64", "--no-plots", "--no-progress"]
    assert _cli(["eval", "--model", M, "--heldout", str(held), "--out", str(tmp_path / "base"), *common]) == 0
    assert _cli(["eval", "--model", M, "--snapshot", str(snap), "--heldout", str(held), "--tests", "ticket-reply",
                 "--max-tokens", "4", "--out", str(tmp_path / "o1"), *common]) == 0
    base_ppl = json.loads((tmp_path / "base" / "report.json").read_text())["heldout"]["ppl"]
    rep = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert rep["snapshot"] == "A" and rep["snapshot_recorded"] is True
    # the figure is the model + τ's: recompute by hand
    model = load_tiny()
    from safetensors.torch import load_file

    tau = load_file(str(snap / "task_vector.safetensors"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in tau:
                p.copy_((p.double() + tau[n]).float())
    tok = bh.local_generator(M).tokenizer
    by_hand = bh.heldout_ppl_local(model, tok, bh.read_texts(held), seq=64)["ppl"]
    assert rep["heldout"]["ppl"] == pytest.approx(by_hand, rel=1e-9) and rep["heldout"]["ppl"] != base_ppl
    meta = json.loads((snap / "meta.json").read_text())
    ev = meta["evals"][0]
    assert len(meta["evals"]) == 1 and ev["heldout_ppl"] == rep["heldout"]["ppl"]
    assert set(ev["pass_rates"]) == {"ticket-reply"} and ev["tests"]["ticket-reply"].endswith("tests.jsonl")
    # attached tests: the same files again, the same figures, one more record
    assert _cli(["eval", "--model", M, "--snapshot", str(snap), "--max-tokens", "4", "--out", str(tmp_path / "o2"),
                 *common]) == 0
    assert "attached tests" in capsys.readouterr().out
    meta2 = json.loads((snap / "meta.json").read_text())
    assert len(meta2["evals"]) == 2
    assert meta2["evals"][1]["pass_rates"] == ev["pass_rates"] and meta2["evals"][1]["heldout_ppl"] == ev["heldout_ppl"]
    assert not list(snap.glob("*.tmp"))


def test_snapshot_tensors_are_the_models():
    assert all(n in dict(load_tiny().named_parameters()) for n in TENSORS)
