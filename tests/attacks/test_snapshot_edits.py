"""Absurd snapshot edits (``POST /v1/snapshots/apply``, ``/v1/rollback``) are refused before a
single byte of the live weights changes. Before the fix a scale or lambda of 1e30 was applied (every
later logprobs request then failed) and 1e308 gave a 500."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import save_file

from plasticity.training import snapshots as S


@pytest.fixture
def rig(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"layers.0.w": torch.randn(16, 8, generator=g), "layers.0.norm": torch.ones(8)}
    (tmp_path / "model").mkdir()
    save_file({k: v.clone() for k, v in base.items()}, str(tmp_path / "model" / "model.safetensors"))
    params = {k: v.clone() for k, v in base.items()}
    snaps = S.Snapshots(tmp_path / "snaps", params, S.BaseWeights(tmp_path / "model", params), threading.Lock(), "fp")
    with torch.no_grad():
        params["layers.0.w"].add_(0.01 * torch.randn(16, 8, generator=g))
    snaps.save("a", {})
    with torch.no_grad():
        params["layers.0.w"].add_(0.01 * torch.randn(16, 8, generator=g))
    snaps.save("b", {})
    return snaps, params


def _bits(params):
    return {k: v.clone() for k, v in params.items()}


def _refused(rig, fn, code, fragment):
    snaps, params = rig
    before = _bits(params)
    with pytest.raises(S.SnapshotError, match=fragment) as ei:
        fn(snaps)
    assert ei.value.code == code
    for k in params:
        assert torch.equal(params[k], before[k]), f"{k} changed by a refused edit"


def test_add_with_scale_1e30_is_refused(rig):
    _refused(rig, lambda s: s.add("a", 1e30), 422, "nothing was changed")


def test_add_with_scale_1e308_is_a_4xx_not_a_500(rig):
    _refused(rig, lambda s: s.add("a", 1e308), 422, "nothing was changed")


def test_task_arithmetic_with_lambda_1e30_is_refused(rig):
    _refused(rig, lambda s: s.merge("task_arithmetic", ["a", "b"], lam=1e30), 422, "nothing was changed")


def test_ties_with_lambda_1e30_is_refused(rig):
    _refused(rig, lambda s: s.merge("ties", ["a", "b"], lam=1e30), 422, "nothing was changed")


def test_unnormalised_weights_1e30_are_refused(rig):
    _refused(rig, lambda s: s.merge("task_arithmetic", ["a", "b"], weights=[1e30, 1.0]), 422,
             "nothing was changed")


def test_edit_growing_a_tensor_past_the_bound_is_refused(rig):
    # finite, but the weights would triple: max_edit_norm_growth (default 2) refuses it
    _refused(rig, lambda s: s.add("a", 5000.0), 422, "max_edit_norm_growth")


def test_boolean_weights_are_not_numbers(rig):
    _refused(rig, lambda s: s.merge("task_arithmetic", ["a", "b"], weights=[True, 1.0]), 400, "boolean")


def test_boolean_scale_is_not_a_number(rig):
    _refused(rig, lambda s: s.add("a", True), 400, "boolean")


def test_string_lambda_is_not_a_number(rig):
    _refused(rig, lambda s: s.merge("task_arithmetic", ["a", "b"], lam="1"), 400, "must be a number")


def test_rollback_to_a_snapshot_holding_nan_is_refused(rig, tmp_path):
    snaps, params = rig
    f = snaps.root / "b" / S.TV_FILE
    from safetensors.torch import load_file

    t = load_file(str(f))
    t["layers.0.w"][3, 3] = float("nan")
    save_file(t, str(f), metadata={"format": "pt", "plasticity": "task_vector", "model_fingerprint": "fp"})
    _refused(rig, lambda s: s.restore("b"), 422, "non-finite|not finite")


def test_a_sane_edit_still_applies(rig):
    snaps, params = rig
    before = _bits(params)
    snaps.add("a", -1.0)
    assert not torch.equal(params["layers.0.w"], before["layers.0.w"])


@pytest.mark.parametrize("name", ["a\n", "a\r", "a\x00", "../a", "a/b", "base", "é", "a" * 65])
def test_snapshot_names_match_whole(rig, name):
    snaps, _ = rig
    with pytest.raises(S.SnapshotError, match="bad snapshot name"):
        snaps.save(name, {})
    assert sorted(p.name for p in snaps.root.iterdir() if not p.name.startswith(".")) == ["a", "b"]


def test_eval_reports_are_bounded(rig):
    snaps, _ = rig
    before = snaps.meta("a")
    with pytest.raises(S.SnapshotError, match="limit") as ei:
        snaps.add_eval("a", {"blob": "x" * (5 << 20)})
    assert ei.value.code == 413 and snaps.meta("a") == before
    for i in range(S.MAX_EVALS):
        snaps.add_eval("a", {"i": i})
    with pytest.raises(S.SnapshotError, match="already holds") as ei:
        snaps.add_eval("a", {"i": "one too many"})
    assert ei.value.code == 409 and len(snaps.meta("a")["evals"]) == S.MAX_EVALS
