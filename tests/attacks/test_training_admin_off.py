"""Training routes are off unless [training] enabled (404), and need the API key (401) — see also
tests/training/test_training_serving.py::test_training_routes_need_key."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm


def test_training_routes_404_when_not_enabled(steer_server):
    import steering_support as ss
    import training_support as ts

    for method, path in (("GET", "/v1/training/status"), ("POST", "/v1/training/examples"),
                         ("POST", "/v1/training/pause"), ("POST", "/v1/training/resume")):
        code, body = ts.request(steer_server, method, path, {"context": "a", "decision": "b"}, key=ss.API_KEY)
        assert code == 404, (path, body)
