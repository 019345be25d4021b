"""Hostile or impossible requests to ``POST /v1/snapshots/{name}/serve`` (snapshots served as LoRA
adapters) on a real server: each gets a clear 4xx, and nothing is loaded into vLLM."""

from __future__ import annotations

import json

import pytest

import training_support as ts
from conftest import LORA_RANK, LORA_SLOTS

pytestmark = pytest.mark.vllm


def _served(srv):
    code, out = ts.request(srv, "GET", "/v1/snapshots")
    assert code == 200, out
    return out["served"]


def _models(srv):
    code, out = ts.request(srv, "GET", "/v1/models")
    return sorted(m["id"] for m in out["data"])


@pytest.fixture
def srv(lora_server):
    for name in list(_served(lora_server)):
        ts.request(lora_server, "DELETE", f"/v1/snapshots/{name}/serve")
    code, out = ts.request(lora_server, "GET", "/v1/snapshots")
    have = {s["name"] for s in out["snapshots"]}
    for name in ("Z1", "Z2", "Z3"):
        if name not in have:  # the live weights as they are: a valid snapshot to serve
            assert ts.request(lora_server, "POST", "/v1/snapshots", {"name": name})[0] == 201
    return lora_server


@pytest.mark.parametrize("name,body,code,msg", [
    ("nope", {}, 404, "unknown snapshot"),
    ("Z1", {"rank": 0}, 422, "rank 0"),
    ("Z1", {"rank": LORA_RANK + 1}, 422, "above the server's slot rank"),
    ("Z1", {"rank": 2.5}, 422, "rank 2.5"),
    ("Z1", {"rank": True}, 422, "rank True"),
    ("Z1", {"energy": 0}, 422, "energy 0"),
    ("Z1", {"energy": 1.5}, 422, "energy 1.5"),
    ("Z1", {"energy": -1}, 422, "energy -1"),
    ("Z1", {"energy": "0.9"}, 422, "energy '0.9'"),
    ("Z1", {"rank": 4, "energy": 0.9}, 422, "exactly one of rank or energy"),
    ("Z1", {"max_rank": 1000}, 422, "above the server's slot rank"),
    ("Z1", {"max_left_out": 7}, 422, "max_left_out 7"),
    ("Z1", {"path": "/etc"}, 400, "unknown fields ['path']"),
    ("base", {}, 400, "bad snapshot name"),
    (".served", {}, 400, "bad snapshot name"),
], ids=["unknown_snapshot", "rank_zero", "rank_above_slot", "rank_fraction", "rank_bool", "energy_zero",
        "energy_above_one", "energy_negative", "energy_string", "rank_and_energy", "max_rank_above_slot",
        "max_left_out_above_one", "unknown_field", "base_name", "served_folder_name"])
def test_bad_serve_requests(srv, name, body, code, msg):
    got, out = ts.request(srv, "POST", f"/v1/snapshots/{name}/serve", body)
    assert got == code and msg in out["error"]["message"], (got, out)
    assert _served(srv) == {} and _models(srv) == [srv.served_model_name]


@pytest.mark.parametrize("path", ["/v1/snapshots/..%2F..%2Fetc/serve", "/v1/snapshots/a%2Fb/serve",
                                  "/v1/snapshots/%2E%2E/serve", "/v1/snapshots/../serve"],
                         ids=["encoded_traversal", "encoded_slash", "encoded_dotdot", "dotdot"])
def test_path_in_the_name(srv, path):
    got, out = ts.request(srv, "POST", path, {})
    assert got in (400, 404), (got, out)
    assert _served(srv) == {} and _models(srv) == [srv.served_model_name]


def test_body_not_an_object(srv):
    got, out = ts.request(srv, "POST", "/v1/snapshots/Z1/serve", raw=b"[1, 2]")
    assert got == 400 and "JSON object" in out["error"]["message"], out


def test_more_snapshots_than_slots(srv):
    names = ["Z1", "Z2", "Z3"][: LORA_SLOTS + 1]
    for n in names[:LORA_SLOTS]:
        assert ts.request(srv, "POST", f"/v1/snapshots/{n}/serve", {}, timeout=600)[0] == 200
    got, out = ts.request(srv, "POST", f"/v1/snapshots/{names[-1]}/serve", {})
    assert got == 409 and "adapter slots" in out["error"]["message"], out
    assert sorted(_served(srv)) == names[:LORA_SLOTS]
    assert names[-1] not in _models(srv)


def test_snapshot_of_another_model(srv):
    root = srv.root / "snapshots"
    src = root / "Z1"
    dst = root / "alien"
    if not dst.exists():
        dst.mkdir()
        (dst / "task_vector.safetensors").write_bytes((src / "task_vector.safetensors").read_bytes())
        meta = json.loads((src / "meta.json").read_text())
        (dst / "meta.json").write_text(json.dumps({**meta, "name": "alien", "model_fingerprint": "0" * 32}))
    got, out = ts.request(srv, "POST", "/v1/snapshots/alien/serve", {})
    assert got == 409 and "another model" in out["error"]["message"], out
    assert "alien" not in _models(srv)


def test_needs_the_api_key(srv):
    got, out = ts.request(srv, "POST", "/v1/snapshots/Z1/serve", {}, key=None)
    assert got == 401, out
    got, out = ts.request(srv, "DELETE", "/v1/snapshots/Z1/serve", key="wrong")
    assert got == 401, out


def test_delete_what_is_not_served(srv):
    got, out = ts.request(srv, "DELETE", "/v1/snapshots/Z2/serve")
    assert got == 404 and "not served" in out["error"]["message"], out
