"""Which model and budget a run gets, and the aggregate over several seeds (``--seeds``).

The seeds' runs themselves are full experiments (minutes each): here they are stood in for by
results.json files, and the subprocess that would run a missing seed by a fake that writes one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from plasticity.experiments import common as C
from plasticity.experiments import seeds as S
from plasticity.experiments.cli import namespace


def _model(root: Path, folder: str, *, name: str | None = None, size: int = 1000) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    with open(d / "model.safetensors", "wb") as f:
        f.truncate(size)  # sparse: only the size matters to the budget choice
    if name:
        (d / "manifest.json").write_text(json.dumps({"name": name, "model_safetensors_sha256": "ab" * 32}))
    return d


def test_a_model_is_found_by_name_in_its_recipe_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_TEST_MODELS_DIR", str(tmp_path))
    old = _model(tmp_path, "smollm2-135m-instruct-000000000000", name="smollm2-135m-instruct")
    new = _model(tmp_path, "smollm2-135m-instruct-111111111111", name="smollm2-135m-instruct")
    _model(tmp_path, "smollm2-135m-instruct-evil", name="something-else")
    os.utime(old / "config.json", (time.time() - 100, time.time() - 100))
    assert C.resolve_model("smollm2-135m-instruct", "x") == new.resolve()
    # the default name resolves the same way; a folder claiming another name is never picked
    assert C.resolve_model(None, "smollm2-135m-instruct") == new.resolve()
    (new / "manifest.json").write_text(json.dumps({"name": "other"}))
    assert C.resolve_model("smollm2-135m-instruct", "x") == old.resolve()
    with pytest.raises(SystemExit, match="not a model folder"):
        C.resolve_model("no-such-model", "x")


def test_the_budget_follows_the_model(tmp_path, monkeypatch):
    from plasticity.experiments import gdn_state, lr_sweep

    monkeypatch.setenv("PLASTICITY_TEST_MODELS_DIR", str(tmp_path))
    tiny = _model(tmp_path, "qwen3-tiny", name="qwen3-tiny", size=17 * 2**20)
    real = _model(tmp_path, "smollm2-135m-instruct-abc", name="smollm2-135m-instruct", size=540 * 2**20)
    _model(tmp_path, "qwen3_5-tiny", name="qwen3_5-tiny", size=17 * 2**20)
    B = lr_sweep.BUDGETS
    # without --model: the real model for a full run, the tiny one for --quick
    assert B.model_dir(namespace()) == real.resolve()
    assert B.model_dir(namespace(quick=True)) == tiny.resolve()
    assert B.pick(namespace()) is B.real and B.pick(namespace(quick=True)) is B.quick
    assert B.pick(namespace(model=str(tiny))) is B.tiny
    assert 1e-3 not in B.real.lrs and B.real.lrs != B.tiny.lrs  # SmolLM2 is wrecked by 1e-3 (see the module)
    # the hybrid experiment has only the tiny hybrid
    G = gdn_state.BUDGETS
    assert G.model_dir(namespace()).name == "qwen3_5-tiny" and G.pick(namespace()) is G.tiny


def _result(seed: int, rows: list[dict], *, sha="ab" * 32, budget=None, answer=None) -> dict:
    return {"experiment": "lr-sweep", "answer": answer or f"seed {seed} says something with a number {seed}.",
            "rows": rows, "setup": {"seed": seed, "model_name": "m", "model_sha256": sha},
            "quick": False, "seconds": 10.0 + seed, "budget": budget or {"steps": 30}, "sanity_problems": [],
            "title": "t", "question": "q?", "columns": [["lr", "lr"], ["data", "data"], ["heldout_pass", "held-out"],
                                                       ["ppl_change", "Δ ppl"], ["winner", "winner"]]}


def test_rows_are_aggregated_per_position_over_the_seeds(tmp_path):
    res = [_result(s, [{"lr": 1e-4, "data": "narrow", "heldout_pass": p, "ppl_change": c, "winner": w}])
           for s, p, c, w in ((0, 0.25, 0.10, "a"), (1, 0.75, 0.30, "a"), (2, 0.5, 0.20, "b"))]
    (row,) = S.aggregate_rows(res)
    assert row["lr"] == 1e-4 and row["data"] == "narrow"  # the same in every seed: kept as is
    hp = row["heldout_pass"]
    assert (hp["mean"], hp["min"], hp["max"], hp["values"]) == (0.5, 0.25, 0.75, [0.25, 0.75, 0.5])
    assert hp["sd"] == pytest.approx(0.25)
    assert row["winner"] == {"values": ["a", "a", "b"]}  # disagreement is shown, not hidden
    assert S.cell("heldout_pass", hp) == "50% [25, 75]"
    assert S.cell("ppl_change", row["ppl_change"]) == "+20.0% [+10.0, +30.0]"
    assert S.cell("winner", row["winner"]) == "a / a / b"
    assert S.cell("optimizer_state_bytes", 3 * 2**20) == "3.00 MB"
    assert S.cell("state_bytes", {"mean": 2**20, "min": 0, "max": 2**21}) == "1.00 MB [0.00, 2.00]"
    summary = S.write_summary(tmp_path, res, ["seed-0", "seed-1", "seed-2"])
    assert summary["seeds"] == [0, 1, 2] and summary["model_sha256"] == "ab" * 32
    table = (tmp_path / "table.md").read_text()
    assert "50% [25, 75]" in table and "a / a / b" in table
    report = (tmp_path / "report.md").read_text()
    assert "over 3 seeds" in report and all(r["answer"] in report for r in res)
    # the figure: mean and min-max per row, captioned with the model's sha and the number of seeds
    assert summary["plots"] == ["seeds.png"] and "![seeds.png](seeds.png)" in report
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["heldout_pass"]["values"] == [0.25, 0.75, 0.5]


def test_seeds_that_do_not_match_are_refused(tmp_path):
    a = _result(0, [{"lr": 1.0}])
    with pytest.raises(ValueError, match="different numbers of rows"):
        S.aggregate_rows([a, _result(1, [{"lr": 1.0}, {"lr": 2.0}])])
    with pytest.raises(ValueError, match="different model files"):
        S.write_summary(tmp_path, [a, _result(1, [{"lr": 1.0}], sha="cd" * 32)], ["seed-0", "seed-1"])


@pytest.mark.parametrize("text,seeds", [("0,1,2", [0, 1, 2]), ("0-2", [0, 1, 2]), ("3", [3]), ("0-1,5", [0, 1, 5])])
def test_seed_lists(text, seeds):
    assert S.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1,1", "0-1,1", "-3"])
def test_bad_seed_lists(text):
    with pytest.raises(SystemExit):
        S.parse_seeds(text)


def test_done_seeds_are_kept_and_missing_ones_run(tmp_path, monkeypatch):
    """A seed already there for the same model sha and budget is reused; one with another budget, a
    quick run or a missing one is run again (here by a fake process writing its results)."""
    from plasticity.experiments import lr_sweep

    monkeypatch.setenv("PLASTICITY_TEST_MODELS_DIR", str(tmp_path / "models"))
    model = _model(tmp_path / "models", "qwen3-tiny", name="qwen3-tiny")
    args = namespace(name="lr-sweep", model=str(model), out=str(tmp_path / "out"), no_progress=True)
    budget = json.loads(json.dumps(lr_sweep.BUDGETS.pick(args).as_dict()))
    row = [{"lr": 1e-4, "heldout_pass": 0.5}]
    out = tmp_path / "out"
    for s, b in ((0, budget), (1, {**budget, "steps": 1})):
        (out / f"seed-{s}").mkdir(parents=True)
        (out / f"seed-{s}" / "results.json").write_text(json.dumps(_result(s, row, budget=b)))
    ran = []

    class FakeRun:
        def __init__(self, cmd):
            ran.append(cmd)
            seed = int(cmd[cmd.index("--seed") + 1])
            assert cmd[cmd.index("--out") + 1] == str(out / f"seed-{seed}")
            assert cmd[cmd.index("--model") + 1] == str(model.resolve())
            Path(cmd[cmd.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
            (out / f"seed-{seed}" / "results.json").write_text(json.dumps(_result(seed, row, budget=budget)))

        def wait(self):
            return 0

    monkeypatch.setattr(S.subprocess, "Popen", FakeRun)
    summary = S.run_seeds("lr-sweep", args, [0, 1, 2], jobs=2)
    assert sorted(int(c[c.index("--seed") + 1]) for c in ran) == [1, 2]
    assert summary["seeds"] == [0, 1, 2] and (out / "report.md").is_file()
    ran.clear()
    S.run_seeds("lr-sweep", args, [0, 1, 2])
    assert ran == []  # everything is there now
    with pytest.raises(SystemExit, match="full runs"):
        S.run_seeds("lr-sweep", namespace(name="lr-sweep", quick=True, out=str(out)), [0])
