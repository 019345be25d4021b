"""Hostile training inputs: each is refused with a clear 4xx-class error and never stored/enqueued.

The validation runs in the API process before the journal write; these tests call
it directly (same code as the route) with the real tokenizer, and one HTTP test
per class of input on the real server checks the status code, that the journal
did not grow and the queue did not move.
"""

from __future__ import annotations

import json

import pytest

from models import model_dir

from plasticity.training.routes import ExampleError, TrainingRoutes
from plasticity.training import config as tc


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    from transformers import AutoTokenizer

    r = TrainingRoutes.__new__(TrainingRoutes)
    r.cfg = tc.from_dict({"enabled": True, "max_decision_tokens": 32, "max_example_tokens": 64,
                          "journal": str(tmp_path_factory.mktemp("j") / "j.jsonl")})
    r.tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    return r


def _validate(routes, raw: bytes, ctype="application/json"):
    items = routes.parse_body(raw, ctype)
    return [routes.tokenize(i, ex) for i, ex in enumerate(items)]


GOOD = {"context": [{"role": "user", "content": "hi"}], "decision": "hello"}

BAD = {
    "empty_decision": (json.dumps({"context": "a", "decision": ""}).encode(), 400, "decision"),
    "whitespace_decision": (json.dumps({"context": "a", "decision": "   "}).encode(), 400, "decision"),
    "missing_decision": (json.dumps({"context": "a"}).encode(), 400, "decision"),
    "decision_not_string": (json.dumps({"context": "a", "decision": 5}).encode(), 400, "decision"),
    "empty_context": (json.dumps({"context": "", "decision": "x"}).encode(), 400, "context"),
    "context_wrong_type": (json.dumps({"context": 3, "decision": "x"}).encode(), 400, "context"),
    "bad_message": (json.dumps({"context": [{"role": "user"}], "decision": "x"}).encode(), 400, "messages"),
    "decision_too_long": (json.dumps({"context": "a", "decision": "word " * 200}).encode(), 413, "max_decision_tokens"),
    "example_too_long": (json.dumps({"context": "word " * 200, "decision": "x"}).encode(), 413, "max_example_tokens"),
    "bad_json": (b'{"context": "a", "decision": ', 400, "JSON"),
    "bad_jsonl_line": (b'{"context": "a", "decision": "b"}\n{oops}\n', 400, "line 2"),
    "invalid_utf8": (b'{"context": "\xff\xfe", "decision": "b"}', 400, "UTF-8"),
    "not_an_object": (b'[1, 2]', 400, "object"),
    "empty_list": (b'[]', 400, "no examples"),
    "unknown_field": (json.dumps({"context": "a", "decision": "b", "labels": [1]}).encode(), 400, "unknown"),
    "eos_not_bool": (json.dumps({"context": "a", "decision": "b", "eos": "yes"}).encode(), 400, "eos"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_example_rejected(routes, case):
    raw, code, word = BAD[case]
    ctype = "application/jsonl" if case == "bad_jsonl_line" else "application/json"
    with pytest.raises(ExampleError) as e:
        _validate(routes, raw, ctype)
    assert e.value.code == code
    assert word.lower() in str(e.value).lower()


def test_one_bad_example_rejects_the_whole_request(routes):
    raw = json.dumps({"examples": [GOOD, {"context": "a", "decision": ""}]}).encode()
    with pytest.raises(ExampleError, match="example 1"):
        _validate(routes, raw)


def test_oversized_body_is_413(routes):
    with pytest.raises(ExampleError) as e:
        routes.parse_body(b" " * ((16 << 20) + 1), "application/json")
    assert e.value.code == 413


def test_good_example_tokenised_with_chat_template(routes):
    (rec,) = _validate(routes, json.dumps(GOOD).encode())
    text = routes.tok.decode(rec["context"])
    assert text.startswith("<|im_start|>user\nhi<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert rec["decision"][-1] == routes.tok.eos_token_id and rec["id"].startswith("ex-")


# ---- over HTTP on the real server: 4xx, journal unchanged, nothing queued ----

@pytest.mark.vllm
@pytest.mark.parametrize("case", ["empty_decision", "decision_too_long", "bad_json", "invalid_utf8"])
def test_http_malformed_example_never_journaled_or_queued(train_server, case):
    import training_support as ts

    raw, code, _ = BAD[case]
    journal = train_server.train_root / "journal.jsonl"
    size0 = journal.stat().st_size if journal.exists() else 0
    st0 = ts.status(train_server)
    got, body = ts.request(train_server, "POST", "/v1/training/examples", raw=raw)
    assert got == code, body
    assert "error" in body
    assert (journal.stat().st_size if journal.exists() else 0) == size0
    st1 = ts.status(train_server)
    assert st1["examples_accepted_since_start"] == st0["examples_accepted_since_start"]
