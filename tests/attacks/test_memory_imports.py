"""Hostile memory imports (JSONL files, folders of Markdown notes).

A malformed import raises MemoryStoreError naming the file and, for JSONL, the
line; it is all-or-nothing, so the store is unchanged (compared table by table),
even when the bad part comes after many valid notes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

from plasticity.memory import MemoryStore, MemoryStoreError

MAX = 1000


def dump(path) -> dict:
    with contextlib.closing(sqlite3.connect(path)) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.sqlite", max_text_chars=MAX, max_import_bytes=64 << 10)
    s.add_note("already here", key="here")
    yield s
    s.close()


def refused_import(store, path, match, method="import_jsonl"):
    before = dump(store.path)
    with pytest.raises(MemoryStoreError, match=match) as e:
        getattr(store, method)(path)
    assert dump(store.path) == before
    return str(e.value)


GOOD = json.dumps({"id": "ok", "text": "a valid note", "tags": ["t"], "importance": 0.5})

JSONL_CASES = {
    "malformed_json_line": (GOOD + "\n{oops}\n", "line 2: invalid JSON"),
    "truncated_json_line": (GOOD + '\n{"text": "cut', "line 2: invalid JSON"),
    "not_an_object": ('["text", "x"]\n', "line 1: expected a JSON object, got list"),
    "json_string": ('"just text"\n', "line 1: expected a JSON object, got str"),
    "missing_text": ('{"tags": ["a"]}\n', "line 1: missing field 'text'"),
    "empty_text": ('{"text": ""}\n', "line 1: text is empty"),
    "whitespace_text": ('{"text": "  \\n "}\n', "line 1: text is empty"),
    "text_wrong_type": ('{"text": 12}\n', "line 1: text must be a string, got int"),
    "text_null": ('{"text": null}\n', "line 1: text must be a string, got NoneType"),
    "text_nul_char": ('{"text": "a\\u0000b"}\n', "line 1: text contains a NUL"),
    "text_lone_surrogate": ('{"text": "a\\ud800b"}\n', "line 1: text is not valid Unicode"),
    "text_over_max_size": (json.dumps({"text": "x" * (MAX + 1)}) + "\n", "line 1: text has 1001 characters"),
    "tags_wrong_type": ('{"text": "t", "tags": "a,b"}\n', "line 1: tags must be a list"),
    "tag_wrong_type": ('{"text": "t", "tags": [{"a": 1}]}\n', "line 1: tag must be a string"),
    "importance_out_of_range": ('{"text": "t", "importance": 3}\n', r"line 1: importance must be a number in \[0, 1\]"),
    "importance_nan_literal": ('{"text": "t", "importance": NaN}\n', "line 1: invalid JSON: NaN is not allowed"),
    "importance_infinity_literal": ('{"text": "t", "importance": -Infinity}\n', "line 1: invalid JSON"),
    "importance_overflow_to_inf": ('{"text": "t", "importance": 1e999}\n', "line 1: importance .*inf"),
    "importance_string": ('{"text": "t", "importance": "high"}\n', "line 1: importance must be a number"),
    "importance_bool": ('{"text": "t", "importance": true}\n', "line 1: importance must be a number"),
    "unknown_field": ('{"text": "t", "colour": "red"}\n', "line 1: unknown field.*colour"),
    "id_bool": ('{"text": "t", "id": false}\n', "line 1: note key must be a string or an integer"),
    "id_object": ('{"text": "t", "id": {"a": 1}}\n', "line 1: note key must be"),
    "id_empty": ('{"text": "t", "id": ""}\n', "line 1: invalid note key"),
    "duplicate_id_in_file": (GOOD + "\n" + GOOD + "\n", "line 2: duplicate id 'ok' \\(first on line 1\\)"),
    "id_already_in_store": ('{"text": "t", "id": "here"}\n', "line 1: a note with key 'here' already exists"),
    "links_not_a_list": ('{"text": "t", "links": {"to": 1}}\n', "line 1: links must be a list"),
    "link_not_an_object": ('{"text": "t", "links": ["here"]}\n', "line 1: link 0: expected an object"),
    "link_without_to": ('{"text": "t", "links": [{"type": "x"}]}\n', "line 1: link 0: 'to' must be"),
    "link_to_bool": ('{"text": "t", "links": [{"to": true}]}\n', "line 1: link 0: 'to' must be"),
    "link_to_zero": ('{"text": "t", "links": [{"to": 0}]}\n', "line 1: link 0: 'to' must be"),
    "link_unknown_field": ('{"text": "t", "links": [{"to": 1, "w": 2}]}\n', "line 1: link 0: unknown field"),
    "link_bad_type": ('{"text": "t", "links": [{"to": 1, "type": "a b"}]}\n', "line 1: link 0: invalid link type"),
    "link_bad_weight": ('{"text": "t", "links": [{"to": 1, "weight": -2}]}\n', "line 1: link 0: link weight"),
    "link_to_missing_key": ('{"text": "t", "links": [{"to": "nowhere"}]}\n',
                            "line 1: link 0: link target: no note with key 'nowhere' \\(not in this file"),
    "link_to_missing_id": ('{"text": "t", "links": [{"to": 999}]}\n', "line 1: link 0: .*no note with id 999"),
    "self_link_in_file": ('{"id": "me", "text": "t", "links": [{"to": "me"}]}\n',
                          "line 1: link 0: a note cannot link to itself"),
    "duplicate_link_in_file": ('{"text": "t", "links": [{"to": "here"}, {"to": "here"}]}\n',
                               "line 1: link 1: link .* already exists"),
    "created_at_garbage": ('{"text": "t", "created_at": "soon"}\n', "line 1: created_at 'soon'"),
    "deeply_nested_json": ('{"text": "t", "tags": ' + "[" * 30_000 + "]" * 30_000 + "}\n",
                           "line 1: (invalid JSON|tag must be)"),
    "only_blank_lines": ("\n\n  \n", "no notes in the file"),
    "empty_file": ("", "no notes in the file"),
}


@pytest.mark.parametrize("case", sorted(JSONL_CASES))
def test_malformed_jsonl_refused(store, tmp_path, case):
    content, match = JSONL_CASES[case]
    f = tmp_path / f"{case}.jsonl"
    f.write_text(content, encoding="utf-8", errors="surrogatepass")
    msg = refused_import(store, f, match)
    assert str(f) in msg  # the error names the file


def test_half_valid_file_inserts_nothing(store, tmp_path):
    lines = [json.dumps({"id": f"n{i}", "text": f"valid note {i}", "links": [{"to": f"n{i - 1}"}] if i else []})
             for i in range(200)]
    f = tmp_path / "half.jsonl"
    f.write_text("\n".join(lines[:100] + ['{"text": "bad", "importance": 2}'] + lines[100:]) + "\n")
    refused_import(store, f, "line 101: importance")


def test_error_found_only_while_linking_rolls_back_inserted_notes(store, tmp_path):
    # Every line is valid alone; the missing target is found after the notes were inserted
    # inside the transaction, which must roll back.
    lines = [json.dumps({"id": f"n{i}", "text": f"note {i}"}) for i in range(50)]
    lines.append(json.dumps({"id": "last", "text": "dangling", "links": [{"to": "n49"}, {"to": "n50"}]}))
    f = tmp_path / "late.jsonl"
    f.write_text("\n".join(lines) + "\n")
    refused_import(store, f, "line 51: link 1: .*no note with key 'n50'")


def test_invalid_utf8_line(store, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(GOOD.encode() + b'\n{"text": "caf\xe9 \xff"}\n')
    refused_import(store, f, "line 2: not valid UTF-8")


def test_binary_file(store, tmp_path):
    f = tmp_path / "blob.jsonl"
    f.write_bytes(bytes(range(256)) * 4)
    refused_import(store, f, "line 1: (not valid UTF-8|invalid JSON)")


def test_file_over_import_limit(store, tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_text((GOOD + "\n") * 2000)
    refused_import(store, f, "more than the import limit")


def test_missing_file(store, tmp_path):
    refused_import(store, tmp_path / "nope.jsonl", "cannot read")


def test_directory_given_as_jsonl(store, tmp_path):
    refused_import(store, tmp_path, "is a directory")


# --------------------------------------------------------------------------- Markdown

def _vault(tmp_path, files: dict[str, bytes | str]):
    d = tmp_path / "vault"
    d.mkdir()
    for name, content in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return d


OK_MD = "A fine note about [[other]].\n"

MD_CASES = {
    "front_matter_not_closed": ({"a.md": "---\ntags: [x]\nno end\n", "other.md": "o"}, "a.md: front matter .* never closed"),
    "front_matter_garbage_line": ({"a.md": "---\n!!weird\n---\nbody", "other.md": "o"}, "a.md: front matter line 2"),
    "importance_not_a_number": ({"a.md": "---\nimportance: very\n---\nbody"}, "a.md: front matter line 2: importance"),
    "importance_out_of_range": ({"a.md": "---\nimportance: 7\n---\nbody"}, r"a.md: importance must be a number in \[0, 1\]"),
    "importance_nan": ({"a.md": "---\nimportance: nan\n---\nbody"}, "a.md: importance .*nan"),
    "bad_tag": ({"a.md": "---\ntags: [ok, not ok]\n---\nbody"}, "a.md: invalid tag 'not ok'"),
    "empty_note": ({"a.md": "---\ntags: [x]\n---\n   \n", "b.md": "fine"}, "a.md: note text is empty"),
    "empty_file": ({"a.md": "", "b.md": "fine"}, "a.md: note text is empty"),
    "note_over_max_size": ({"a.md": "x" * (MAX + 1)}, "a.md: note text has 1001 characters"),
    "wiki_link_to_missing_note": ({"a.md": OK_MD, "b.md": "see [[ghost]]", "other.md": "o"},
                                  r"b.md: \[\[ghost\]\] links to a missing note"),
    "invalid_utf8": ({"a.md": b"caf\xe9\n", "b.md": "fine"}, "a.md: not valid UTF-8"),
    "nul_in_text": ({"a.md": "a\x00b"}, "a.md: note text contains a NUL"),
    "duplicate_note_names": ({"x/n.md": "one", "y/n.md": "two"}, "note name 'n' also used by"),
    "name_already_in_store": ({"here.md": "clash"}, "a note with key 'here' already exists"),
    "no_markdown_files": ({"notes.txt": "not markdown"}, "no .md files"),
}


@pytest.mark.parametrize("case", sorted(MD_CASES))
def test_malformed_markdown_refused(store, tmp_path, case):
    files, match = MD_CASES[case]
    refused_import(store, _vault(tmp_path, files), match, "import_markdown_dir")


def test_markdown_half_valid_folder_inserts_nothing(store, tmp_path):
    files = {f"n{i:03}.md": f"note {i} links [[n{(i + 1) % 60:03}]]" for i in range(60)}
    files["zz-bad.md"] = "---\nimportance: 2\n---\nbad"
    refused_import(store, _vault(tmp_path, files), "zz-bad.md: importance", "import_markdown_dir")


def test_markdown_folder_over_import_limit(store, tmp_path):
    files = {f"n{i}.md": "word " * 190 for i in range(80)}  # ~76 KiB in all, each note within MAX
    refused_import(store, _vault(tmp_path, files), "more than the import limit", "import_markdown_dir")


def test_markdown_path_not_a_folder(store, tmp_path):
    f = tmp_path / "a.md"
    f.write_text("x")
    refused_import(store, f, "not a folder", "import_markdown_dir")
