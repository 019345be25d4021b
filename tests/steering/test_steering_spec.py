"""Per-request flag parsing (shared by the API server and the worker)."""

import pytest

from plasticity.steering.spec import SteerSpec, SteeringError, parse_xargs


def test_absent_and_off():
    assert parse_xargs(None) is None
    assert parse_xargs({"other": 1}) is None
    assert parse_xargs({"steer": "none"}) is False
    assert parse_xargs({"steer": ""}) is False


def test_forms():
    assert parse_xargs({"steer": "a"}) == SteerSpec(("a",), (1.0,))
    assert parse_xargs({"steer": "a,b", "steer_scale": "1.5,-2"}) == SteerSpec(("a", "b"), (1.5, -2.0))
    assert parse_xargs({"steer": ["a", "b"], "steer_scale": 3}) == SteerSpec(("a", "b"), (3.0, 3.0))
    assert parse_xargs({"steer": "a", "steer_layers": "3,2"}).layers == (2, 3)
    assert parse_xargs({"steer": "a", "steer_layers": [1]}).layers == (1,)


def test_canonical_roundtrip_and_salt():
    s = SteerSpec(("a", "b"), (0.1, -2.5), (1, 2))
    assert parse_xargs(s.to_xargs()) == s
    assert s.cache_salt() != SteerSpec(("a", "b"), (0.1, -2.5)).cache_salt()
    assert len(s.cache_salt()) <= 128


@pytest.mark.parametrize("xargs,msg", [
    ({"steer": "a", "steer_scale": "nan"}, "not finite"),
    ({"steer": "a", "steer_scale": 1e9}, "exceeds the limit"),
    ({"steer": "a,b", "steer_scale": "1,2,3"}, "3 scales for 2 vectors"),
    ({"steer": "a/../b"}, "invalid vector name"),
    ({"steer": "a,a"}, "named twice"),
    ({"steer_scale": 2}, "without vllm_xargs.steer"),
    ({"steer": "a", "steer_layer": 2}, "unknown steering key"),
    ({"steer": "a", "steer_layers": "x"}, "not an integer"),
    ({"steer": {"a": 1}}, "must be a string"),
    ([1, 2], "must be an object"),
])
def test_refused(xargs, msg):
    with pytest.raises(SteeringError, match=msg):
        parse_xargs(xargs)
