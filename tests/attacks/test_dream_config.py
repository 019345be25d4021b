"""Malformed ``[dream]`` configs: each bad value raises DreamConfigError naming the key; the CLI
exits 2 with the message and writes nothing (no store file is created)."""

from __future__ import annotations

import pytest

from plasticity.dream import config as dc

BAD = [
    ({"bogus": 1}, r"unknown \[dream\] keys \['bogus'\]"),
    ({"enabled": "yes"}, r"dream\.enabled must be true or false"),
    ({"schedule": "hourly"}, r"dream\.schedule must be one of"),
    ({"sleep_window": "25:00-03:00"}, r"dream\.sleep_window must be HH:MM-HH:MM"),
    ({"sleep_window": 3}, r"dream\.sleep_window must be a string"),
    ({"cycles_per_hour": 0}, r"dream\.cycles_per_hour must be > 0"),
    ({"cycles_per_hour": float("inf")}, r"dream\.cycles_per_hour must be finite"),
    ({"cycles_per_hour": float("nan")}, r"dream\.cycles_per_hour must be finite"),
    ({"cycles_per_hour": True}, r"dream\.cycles_per_hour must be a number"),
    ({"walk_length": 1}, r"dream\.walk_length must be in \[2, 5\]"),
    ({"walk_length": 2.5}, r"dream\.walk_length must be an integer"),
    ({"temperature": -0.1}, r"dream\.temperature must be ≥ 0"),
    ({"temperature": 9}, r"dream\.temperature must be ≤ 2"),
    ({"top_p": 0}, r"dream\.top_p must be > 0"),
    ({"scenario_max_tokens": 0}, r"dream\.scenario_max_tokens must be in"),
    ({"scenario_prompt": "Write a question."}, r"dream\.scenario_prompt must contain \{notes\}"),
    ({"scenario_prompt": "{notes} {secret}"}, r"dream\.scenario_prompt has an unknown placeholder \{secret\}"),
    ({"response_system": "{scenario}"}, r"dream\.response_system has an unknown placeholder"),
    ({"response_prefix": "a\x00b"}, r"dream\.response_prefix must be at most"),
    ({"judge": "oracle"}, r"dream\.judge must be one of"),
    ({"judge": []}, r"dream\.judge must be one of"),
    ({"judge": ["rule", "rule"]}, r"dream\.judge lists a judge twice"),
    ({"judge": [1]}, r"dream\.judge must be one of"),
    ({"accept_threshold": 11}, r"dream\.accept_threshold must be ≤ 10"),
    ({"novelty_threshold": 0}, r"dream\.novelty_threshold must be > 0"),
    ({"novelty_threshold": 1.5}, r"dream\.novelty_threshold must be ≤ 1"),
    ({"embedding": "openai"}, r"dream\.embedding must be one of"),
    ({"replay_ratio": 1.0}, r"dream\.replay_ratio must be < 1"),
    ({"db": 5}, r"dream\.db must be a path string"),
    ({"seed": -2}, r"dream\.seed must be in"),
    ({"timeout_s": 0}, r"dream\.timeout_s must be > 0"),
    ({"max_queue": 0}, r"dream\.max_queue must be in"),
    ({"submit_batch": 65}, r"dream\.submit_batch must be in"),
    ({"vllm_xargs": "steer=x"}, r"dream\.vllm_xargs must be a table"),
    ({"rubric": "x"}, r"\[dream\.rubric\] must be a table"),
    ({"rubric": {"prompt": "Rate {response}"}}, r"dream\.rubric\.prompt must contain \{scenario\}"),
    ({"rubric": {"max_tokens": 0}}, r"dream\.rubric\.max_tokens must be in"),
    ({"rubric": {"extra": 1}}, r"unknown \[dream\.rubric\] keys"),
    ({"rule": {"must_match": ["(unclosed"]}}, r"dream\.rule\.must_match has an invalid regex"),
    ({"rule": {"must_not_match": [""]}}, r"dream\.rule\.must_not_match must be a list of non-empty regex"),
    ({"rule": {"min_chars": 50, "max_chars": 10}}, r"dream\.rule\.min_chars \(50\) must not exceed max_chars"),
    ({"rule": {"max_repeat": 2}}, r"dream\.rule\.max_repeat must be ≤ 1"),
    ({"judge": "endpoint"}, r"dream\.endpoint\.url must be an http\(s\) URL"),
    ({"judge": "endpoint", "endpoint": {"url": "file:///etc/passwd"}}, r"dream\.endpoint\.url must be an http"),
    ({"endpoint": {"api_key_env": "A B"}}, r"dream\.endpoint\.api_key_env must be an environment variable name"),
    ({"endpoint": {"timeout_s": -1}}, r"dream\.endpoint\.timeout_s must be > 0"),
]


@pytest.mark.parametrize("sec,match", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_dream_values_are_named(sec, match):
    with pytest.raises(dc.DreamConfigError, match=match):
        dc.from_dict(sec)


def test_dream_must_be_a_table():
    with pytest.raises(dc.DreamConfigError, match=r"\[dream\] must be a table"):
        dc.from_dict(["x"])


def test_invalid_toml_and_missing_file(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[dream\nenabled = true\n")
    with pytest.raises(dc.DreamConfigError, match="not valid TOML"):
        dc.load(p)
    with pytest.raises(dc.DreamConfigError, match="cannot read the config"):
        dc.load(tmp_path / "nope.toml")


def test_bad_training_section_is_reported_through_the_dream_loader(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[training]\nlr = -1\n[dream]\n")
    with pytest.raises(dc.DreamConfigError, match="training.lr"):
        dc.load(p)


def test_nan_from_toml_is_refused(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[dream]\ntemperature = nan\n")
    with pytest.raises(dc.DreamConfigError, match=r"dream\.temperature must be finite"):
        dc.load(p)


@pytest.mark.parametrize("argv,match", [
    (["--temperature", "5"], r"--temperature must be ≤ 2"),
    (["--judge", "oracle"], r"--judge must be one of"),
    (["--walk-length", "9"], r"--walk-length must be in"),
    (["--cycles-per-hour", "-1"], r"--cycles-per-hour must be > 0"),
], ids=["temperature", "judge", "walk", "rate"])
def test_cli_refuses_bad_overrides_and_writes_nothing(tmp_path, capsys, argv, match):
    from plasticity.dream.cli import main

    db = tmp_path / "m.sqlite"
    assert main(["--db", str(db), "--server", "http://127.0.0.1:9", "--cycles", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plasticity dream: ") and __import__("re").search(match, err), err
    assert not db.exists()


def test_cli_bad_config_file_exits_2(tmp_path, capsys):
    from plasticity.dream.cli import main

    p = tmp_path / "p.toml"
    p.write_text('[dream]\njudge = "oracle"\n')
    db = tmp_path / "m.sqlite"
    assert main(["--config", str(p), "--db", str(db), "--cycles", "1"]) == 2
    assert "dream.judge must be one of" in capsys.readouterr().err and not db.exists()
    assert main(["--config", str(tmp_path / "missing.toml"), "--cycles", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_invalid_dream_config_is_not_told_to_a_caller_without_the_key(tmp_path, monkeypatch):
    """With a [dream] config that fails to load, ``GET /v1/dream/status`` answered 500 with the
    loader's message (it names the server's files and settings) before it looked at the key."""
    import hashlib
    import types

    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient

    from plasticity.dream import server as dream_server

    cfgp = tmp_path / "p.toml"
    cfgp.write_text(f'[dream]\ndb = "{tmp_path / "secret-store.sqlite"}"\nwalk_length = 9\n')
    monkeypatch.setenv("PLASTICITY_CONFIG", str(cfgp))
    monkeypatch.setattr(dream_server, "_CFG", None)
    monkeypatch.setattr(dream_server, "_CFG_ERROR", None)
    r = APIRouter()
    dream_server.attach(r, types.SimpleNamespace(tokens=[hashlib.sha256(b"k").digest()]))
    app = FastAPI()
    app.include_router(r)
    c = TestClient(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        res = c.get("/v1/dream/status", headers=headers)
        assert res.status_code == 401 and "walk_length" not in res.text, res.text
    res = c.get("/v1/dream/status", headers={"Authorization": "Bearer k"})
    assert res.status_code == 500 and "walk_length" in res.text, res.text
