"""The prefix-cache salt the middleware writes: K/V is reused only between requests with the same
user salt, the same steering (and the same registration of each vector), and the same version of
the live weights (bumped by the worker after every training step, merge or rollback)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from plasticity.steering.catalogue import Catalogue
from plasticity.steering.middleware import rewrite_doc
from plasticity.steering.config import SteeringConfig
from plasticity.training.version import VersionReader, WeightsVersion, version_path

KEY = b"k" * 32


class _Engine:
    async def collective_rpc(self, method, args=()):
        return [{"ok": True}]


@pytest.fixture
def cat():
    c = Catalogue(_Engine(), SteeringConfig(), {"hidden_size": 4, "num_layers": 2, "dtype": "float32"})
    asyncio.run(c.add("v", {0: np.ones(4, np.float32)}, "inline"))
    return c


def _salt(cat, body, weights=None):
    out = rewrite_doc(json.loads(json.dumps(body)), cat, "/v1/completions", KEY, weights)
    return None if out is None else out.get("cache_salt")


PLAIN = {"model": "m", "prompt": "p"}
STEERED = {**PLAIN, "vllm_xargs": {"steer": "v"}}


def test_without_training_unsteered_requests_are_untouched(cat):
    assert rewrite_doc(dict(PLAIN), cat, "/v1/completions", KEY, None) is None


def test_each_weights_version_gets_its_own_salt(cat):
    a, b = _salt(cat, PLAIN, "e.1"), _salt(cat, PLAIN, "e.2")
    assert a and b and a != b and a == _salt(cat, PLAIN, "e.1")
    assert _salt(cat, {**PLAIN, "cache_salt": "tenant"}, "e.1") not in (a, None)
    assert _salt(cat, STEERED, "e.1") not in (a, _salt(cat, STEERED, "e.2"))


def test_a_replaced_vector_does_not_reuse_the_old_ones_kv(cat):
    before = _salt(cat, STEERED)
    asyncio.run(cat.add("v", {0: np.full(4, 2.0, np.float32)}, "inline", replace=True))
    assert _salt(cat, STEERED) != before


def test_the_worker_and_the_api_server_share_the_version(tmp_path):
    path = version_path(tmp_path / "journal.jsonl")
    reader = VersionReader(path)
    assert reader.read() is None  # no worker yet
    w = WeightsVersion(path)
    v0 = reader.read()
    w.bump()
    v1 = reader.read()
    assert v0 != v1 and v1.endswith(".1")
    assert WeightsVersion(path) and reader.read() not in (v0, v1)  # a restarted worker: a new epoch
