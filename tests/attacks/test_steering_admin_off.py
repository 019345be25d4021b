"""Admin routes are off unless the config enables them, and need the API key
when one is set: checked on the plugin's own FastAPI routes (no engine needed)."""


from fastapi import FastAPI
from fastapi.testclient import TestClient

from plasticity.server.routes import PlasticityEndpoints
from plasticity.steering.config import SteeringConfig


def _client(admin: bool, keys=()):
    plugin = PlasticityEndpoints()
    plugin.cfg = SteeringConfig(admin=admin)
    import hashlib

    plugin.tokens = [hashlib.sha256(k.encode()).digest() for k in keys]
    app = FastAPI()
    plugin.attach_router(app)
    return TestClient(app)


BODY = {"name": "x", "values": {"1": [0.0, 1.0]}}


def test_admin_off_by_default(monkeypatch):
    monkeypatch.delenv("PLASTICITY_CONFIG", raising=False)
    assert PlasticityEndpoints().cfg.admin is False
    c = _client(admin=False)
    for method, path, body in (("POST", "/v1/steering/vectors", BODY), ("DELETE", "/v1/steering/vectors/x", None),
                               ("POST", "/v1/steering/default", {"enabled": False})):
        r = c.request(method, path, json=body)
        assert r.status_code == 403 and "admin = true" in r.json()["error"]["message"]


def test_admin_needs_key_when_set():
    c = _client(admin=True, keys=["k1"])
    assert c.post("/v1/steering/vectors", json=BODY).status_code == 401
    assert c.post("/v1/steering/vectors", json=BODY, headers={"Authorization": "Bearer nope"}).status_code == 401
    # right key: gets past auth (then 503: no engine in this in-process app)
    assert c.post("/v1/steering/vectors", json=BODY, headers={"Authorization": "Bearer k1"}).status_code == 503


def test_config_rejects_unknown_keys(tmp_path):
    import pytest

    from plasticity.steering import config

    p = tmp_path / "p.toml"
    p.write_text("[steering]\nadmn = true\n")
    with pytest.raises(ValueError, match="unknown \\[steering\\] keys"):
        config.load(p)
