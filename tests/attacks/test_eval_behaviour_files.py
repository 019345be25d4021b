"""Malformed behaviour test files: each is refused whole with a clear error naming the line.

Each case asserts (1) `BehaviourFileError` with the expected words and line number,
(2) that no test ran (the generator is never called), and (3) that `plasticity eval`
exits with status 2 and writes no report folder.
"""

from __future__ import annotations

import argparse
import json

import pytest

from plasticity.eval import behaviour as bh
from plasticity.eval.behaviour import BehaviourFileError

OK = json.dumps({"prompt": "What is the status of ticket 1?", "expect": "^Ticket"})
USER = [{"role": "user", "content": "hi"}]


def j(obj) -> bytes:
    return json.dumps(obj).encode()


# name -> (file bytes, words in the message, line number or None)
BAD = {
    "bad_json": (b'{"prompt": "a", "expect": ', "invalid JSON", 1),
    "bad_json_second_line": (OK.encode() + b"\n{oops}\n", "invalid JSON", 2),
    "trailing_garbage": (OK.encode() + b" x\n", "invalid JSON", 1),
    "not_an_object": (b"[1, 2]", "must be a JSON object", 1),
    "a_string_line": (b'"prompt"', "must be a JSON object", 1),
    "missing_prompt": (j({"expect": "a"}), "missing 'prompt'", 1),
    "empty_prompt": (j({"prompt": "  ", "expect": "a"}), "'prompt' is empty", 1),
    "prompt_number": (j({"prompt": 5, "expect": "a"}), "'prompt' must be a string or a list", 1),
    "prompt_null": (j({"prompt": None, "expect": "a"}), "'prompt' must be a string or a list", 1),
    "empty_message_list": (j({"prompt": [], "expect": "a"}), "empty list of chat messages", 1),
    "message_not_object": (j({"prompt": ["hi"], "expect": "a"}), "message 0 must be an object", 1),
    "message_missing_role": (j({"prompt": [{"content": "hi"}], "expect": "a"}), "'role' must be one of", 1),
    "message_bad_role": (j({"prompt": [{"role": "usr", "content": "hi"}], "expect": "a"}), "'role' must be one of", 1),
    "message_content_not_string": (j({"prompt": [{"role": "user", "content": ["hi"]}], "expect": "a"}),
                                   "'content' must be a string", 1),
    "message_missing_content": (j({"prompt": [{"role": "user"}], "expect": "a"}), "'content' must be a string", 1),
    "message_extra_field": (j({"prompt": [{"role": "user", "content": "hi", "name": "x"}], "expect": "a"}),
                            "unknown fields ['name']", 1),
    "messages_all_empty": (j({"prompt": [{"role": "user", "content": " "}], "expect": "a"}), "all empty", 1),
    "neither_expect_nor_forbid": (j({"prompt": "a"}), "neither 'expect' nor 'forbid'", 1),
    "both_null": (j({"prompt": "a", "expect": None, "forbid": None}), "neither 'expect' nor 'forbid'", 1),
    "invalid_regex_expect": (j({"prompt": "a", "expect": "([a-z"}), "'expect' is not a valid regex", 1),
    "invalid_regex_forbid": (j({"prompt": "a", "forbid": "*x"}), "'forbid' is not a valid regex", 1),
    "empty_regex": (j({"prompt": "a", "expect": ""}), "empty regex", 1),
    "regex_not_string": (j({"prompt": "a", "expect": 3}), "'expect' must be a regex string or null", 1),
    "regex_list": (j({"prompt": "a", "forbid": ["x"]}), "'forbid' must be a regex string or null", 1),
    "huge_regex": (j({"prompt": "a", "expect": "a" * 5000}), "longer than", 1),
    "max_tokens_zero": (j({"prompt": "a", "expect": "a", "max_tokens": 0}), "'max_tokens' must be in 1..4096", 1),
    "max_tokens_negative": (j({"prompt": "a", "expect": "a", "max_tokens": -5}), "'max_tokens' must be in", 1),
    "max_tokens_huge": (j({"prompt": "a", "expect": "a", "max_tokens": 10 ** 9}), "'max_tokens' must be in", 1),
    "max_tokens_float": (j({"prompt": "a", "expect": "a", "max_tokens": 2.5}), "'max_tokens' must be an integer", 1),
    "max_tokens_bool": (j({"prompt": "a", "expect": "a", "max_tokens": True}), "'max_tokens' must be an integer", 1),
    "max_tokens_string": (j({"prompt": "a", "expect": "a", "max_tokens": "8"}), "'max_tokens' must be an integer", 1),
    "id_empty": (j({"prompt": "a", "expect": "a", "id": ""}), "'id' must be a non-empty string", 1),
    "id_number": (j({"prompt": "a", "expect": "a", "id": 3}), "'id' must be a non-empty string", 1),
    "duplicate_id": (j({"prompt": "a", "expect": "a", "id": "x"}) + b"\n" + j({"prompt": "b", "expect": "b", "id": "x"}),
                     "duplicate id 'x' (first on line 1)", 2),
    "unknown_field": (j({"prompt": "a", "expect": "a", "expected": "b"}), "unknown fields ['expected']", 1),
    "invalid_utf8": (OK.encode() + b'\n{"prompt": "\xff\xfe", "expect": "a"}\n', "not valid UTF-8", 2),
    "empty_file": (b"", "no tests", None),
    "only_blank_lines": (b"\n  \n\t\n", "no tests", None),
    "deeply_nested_json": (b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b', "expect": "a"}', "invalid JSON", 1),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_behaviour_file_rejected(case, tmp_path, capsys):
    data, words, line = BAD[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(data)
    with pytest.raises(BehaviourFileError) as ei:
        bh.load_tests(path)
    msg = str(ei.value)
    assert words in msg, msg
    assert str(path) in msg
    assert ei.value.line == line
    if line is not None:
        assert f"line {line}:" in msg

    # No test runs: validation happens before the first generation.
    called = []
    with pytest.raises(BehaviourFileError):
        bh.run_tests(lambda p, n: called.append(p) or "", path)
    assert called == []

    # The command refuses it with status 2 and writes nothing.
    from plasticity.eval.cli import add_parser

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the file is refused first
    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "--model", str(model), "--tests", str(path), "--out", str(out)])
    assert args.func(args) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_test_objects_validated_like_file_lines():
    with pytest.raises(BehaviourFileError, match="neither 'expect' nor 'forbid'"):
        bh.run_tests(lambda p, n: "", [{"prompt": "a"}])
    with pytest.raises(BehaviourFileError, match="must be a JSON object"):
        bh.parse_test(["prompt", "a"])


def test_file_too_large_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(bh, "MAX_FILE_BYTES", 64)
    p = tmp_path / "big.jsonl"
    p.write_text((OK + "\n") * 10)
    with pytest.raises(BehaviourFileError, match="larger than"):
        bh.load_tests(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BehaviourFileError, match="cannot read"):
        bh.load_tests(tmp_path / "nope.jsonl")
    with pytest.raises(BehaviourFileError, match="cannot read"):
        bh.load_tests(tmp_path)
