"""Malformed score-matrix files and held-out text files for `plasticity eval`.

Each is refused with a clear message (exit status 2) before anything runs, and no
report folder is written.
"""

from __future__ import annotations

import argparse
import json

import pytest

from plasticity.eval import behaviour as bh
from plasticity.eval.behaviour import BehaviourFileError
from plasticity.eval.cli import EvalInputError, add_parser, load_scores_matrix

GOOD = {"tasks": ["a", "b"], "scores": [[1.0, 0.0], [0.5, 1.0]]}

# name -> (file text, words in the message)
BAD = {
    "not_json": ("{scores: [[1]]}", "invalid JSON"),
    "not_utf8": (b"\xff\xfe[[1]]", "invalid JSON"),
    "a_number": ("3", "expected an object"),
    "missing_scores": (json.dumps({"tasks": ["a"]}), "missing 'scores'"),
    "unknown_field": (json.dumps(dict(GOOD, score=[[1]])), "unknown fields ['score']"),
    "empty_matrix": (json.dumps({"scores": []}), "empty"),
    "ragged": (json.dumps({"scores": [[1, 2], [3]]}), "square"),
    "not_square": (json.dumps({"scores": [[1, 2, 3], [4, 5, 6]]}), "square"),
    "nan": ('{"scores": [[NaN]]}', "NaN"),
    "infinity": ('{"scores": [[1, 0], [0, Infinity]]}', "infinite"),
    "string_score": (json.dumps({"scores": [["1"]]}), "must be a number"),
    "bool_score": (json.dumps({"scores": [[True]]}), "must be a number"),
    "null_score": (json.dumps({"scores": [[None]]}), "must be a number"),
    "row_not_list": (json.dumps({"scores": [1, 2]}), "row 0"),
    "baseline_wrong_length": (json.dumps(dict(GOOD, baseline=[0.0])), "baseline has 1"),
    "baseline_nan": ('{"scores": [[1]], "baseline": [NaN]}', "baseline[0] is NaN"),
    "task_count": (json.dumps(dict(GOOD, tasks=["a"])), "1 task names"),
    "duplicate_tasks": (json.dumps(dict(GOOD, tasks=["a", "a"])), "distinct"),
    "empty_task_name": (json.dumps(dict(GOOD, tasks=["a", ""])), "non-empty strings"),
    "flag_not_bool": (json.dumps(dict(GOOD, higher_is_better="yes")), "true or false"),
    "ppl_wrong_length": (json.dumps(dict(GOOD, heldout_ppl=[1.0])), "heldout_ppl"),
    "ppl_negative": (json.dumps(dict(GOOD, heldout_ppl=[10.0, -1.0])), "heldout_ppl[1]"),
    "ppl_not_list": (json.dumps(dict(GOOD, heldout_ppl=12.0)), "heldout_ppl"),
}


def _run(argv) -> int:
    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_scores_matrix_rejected(case, tmp_path, capsys):
    text, words = BAD[case]
    p = tmp_path / f"{case}.json"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    with pytest.raises(EvalInputError) as ei:
        load_scores_matrix(p)
    assert words in str(ei.value) and str(p) in str(ei.value)
    out = tmp_path / "out"
    assert _run(["eval", "--scores-matrix", str(p), "--out", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


BAD_HELDOUT = {
    "jsonl_bad_line": (".jsonl", '{"text": "a"}\n{"text": \n', "line 2: invalid JSON"),
    "jsonl_no_text": (".jsonl", '{"txt": "a"}\n', 'line 1: each line must be an object with a string "text"'),
    "jsonl_text_number": (".jsonl", '{"text": 5}\n', "line 1"),
    "json_not_list": (".json", '{"text": "a"}', "expected a list"),
    "json_bad_entry": (".json", '["a", 3]', "entry 1"),
    "empty_txt": (".txt", "\n\n", "no held-out text"),
    "not_utf8": (".txt", b"\xff\xfe", "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_HELDOUT))
def test_malformed_heldout_file_rejected(case, tmp_path, capsys):
    suffix, text, words = BAD_HELDOUT[case]
    p = tmp_path / f"{case}{suffix}"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    with pytest.raises(BehaviourFileError) as ei:
        bh.read_texts(p)
    assert words in str(ei.value)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the file is refused first
    out = tmp_path / "out"
    assert _run(["eval", "--model", str(model), "--heldout", str(p), "--out", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()
