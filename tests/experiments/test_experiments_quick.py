"""Every experiment end to end with its --quick budget (a few real training steps) on the local models.

Checks the outputs, not the science: report.md / results.json / table.md / plots written, the
answer is a sentence with numbers, every number finite, rates in [0, 1], perplexities > 0. The
full runs and their answers are in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch

from models import heldout_path, manifest, model_dir

from plasticity.experiments import EXPERIMENTS
from plasticity.experiments.cli import add_parser, main as cli_main, namespace, run_one
from plasticity.experiments.common import sanity_problems

MODEL = {"gdn-state": "qwen3_5-tiny"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def _strict_json(path):
    def bad(c):
        raise ValueError(f"{path}: non-finite constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment(name, tmp_path):
    out = tmp_path / name
    corpus = heldout_path().parent
    args = namespace(name=name, quick=True, out=str(out), seed=0, no_progress=True,
                     model=str(model_dir(MODEL.get(name, "qwen3-tiny"))),
                     heldout=str(corpus / "heldout.jsonl"), replay=str(corpus / "train.txt"))
    res = run_one(name, args)

    assert res["experiment"] == name and res["quick"] is True
    assert sanity_problems(res) == [], sanity_problems(res)
    for f in ("report.md", "results.json", "table.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert res["plots"], "no plots"
    for p in res["plots"]:
        assert (out / p).is_file() and (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p

    saved = _strict_json(out / "results.json")
    assert saved["answer"] == res["answer"]
    # every result names the exact model bytes it came from (the plots carry the same caption)
    mname = MODEL.get(name, "qwen3-tiny")
    assert saved["setup"]["model_name"] == mname
    assert saved["setup"]["model_sha256"] == manifest(mname)["model_safetensors_sha256"]
    ans = res["answer"]
    assert len(ans) > 60 and re.search(r"\d", ans), ans
    assert ans in (out / "report.md").read_text()
    table = (out / "table.md").read_text().splitlines()
    assert len(table) >= 3 and table[0].startswith("|") and set(table[1]) <= set("|-")

    n_rates = n_ppl = 0
    for path, v in _walk(saved):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        assert math.isfinite(v), path
        leaf = path.rsplit(".", 1)[-1].split("[")[0]
        if leaf.endswith(("_pass", "_rate", "agreement")):
            assert 0.0 <= v <= 1.0, (path, v)
            n_rates += 1
        if leaf == "ppl" or leaf.endswith("_ppl"):
            assert v > 0, (path, v)
            n_ppl += 1
    assert n_rates > 0 and n_ppl > 0, "no behaviour rate or perplexity in the results"
    for row in saved["rows"]:
        if "heldout_pass" in row:
            assert 0.0 <= row["heldout_pass"] <= 1.0 and 0.0 <= row["control_pass"] <= 1.0


def test_cli_list_and_parser(capsys):
    ap = argparse.ArgumentParser(prog="plasticity")
    sub = ap.add_subparsers(dest="cmd")
    add_parser(sub)
    a = ap.parse_args(["experiment", "list"])
    assert a.func(a) == 0
    listed = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in listed
    a = ap.parse_args(["experiment", "lr-sweep", "--quick", "--out", "x", "--seed", "3", "--model", "m"])
    assert (a.name, a.quick, a.out, a.seed, a.model) == ("lr-sweep", True, "x", 3, "m")
    with pytest.raises(SystemExit):
        ap.parse_args(["experiment", "no-such-experiment"])
    assert cli_main is a.func


def test_bad_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not a model folder"):
        run_one("lr-sweep", namespace(quick=True, out=str(tmp_path / "o"), model=str(tmp_path), no_progress=True))
    assert not (tmp_path / "o" / "results.json").exists()


def test_default_models_are_found_from_the_checkout(tmp_path, monkeypatch):
    """The installed wheel sits in site-packages: without --model the local models are looked up from the
    current directory upwards (where scripts/setup.sh built them), not beside the package."""
    from plasticity.experiments import common

    models = tmp_path / ".cache" / "plasticity" / "models"
    (models / "qwen3-tiny").mkdir(parents=True)
    (models / "qwen3-tiny" / "config.json").write_text("{}")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.delenv("PLASTICITY_TEST_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert common.models_root() == models.resolve()
    assert common.resolve_model(None, "qwen3-tiny") == (models / "qwen3-tiny").resolve()
    monkeypatch.setenv("PLASTICITY_TEST_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert common.models_root() == tmp_path / "elsewhere"
