"""``POST /v1/training/settings`` on the worker side (``settings``), without a server."""

from __future__ import annotations

import types

import pytest

from plasticity.vllm.training import settings


def _state(lr=1e-3):
    tr = types.SimpleNamespace(opt=types.SimpleNamespace(param_groups=[{"lr": lr}]), guard=None,
                               rng=None, replay_credit=0.7)
    return types.SimpleNamespace(trainer=tr)


def test_replay_seed_restarts_the_replay_stream():
    st = _state()
    out = settings(st, {"replay_seed": 10})
    assert out["replay_seed"] == 10 and st.trainer.replay_credit == 0.0
    first = [st.trainer.rng.random() for _ in range(5)]
    settings(st, {"replay_seed": 10})
    assert [st.trainer.rng.random() for _ in range(5)] == first
    settings(st, {"replay_seed": 11})
    assert [st.trainer.rng.random() for _ in range(5)] != first


@pytest.mark.parametrize("changes", [{"replay_seed": "10"}, {"replay_seed": True}, {"replay_seed": 1.0},
                                     {"replay_seed": None}, {"seed": 1}, {"lr": -1.0}, {"lr": float("inf")}])
def test_bad_settings_change_nothing(changes):
    st = _state()
    with pytest.raises(ValueError):
        settings(st, changes)
    assert st.trainer.rng is None and st.trainer.opt.param_groups[0]["lr"] == 1e-3
