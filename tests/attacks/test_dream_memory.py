"""Bad memories fed to the dream loop (``plasticity dream --import``, or a bad store file): a clear
error with exit code 2, the store unchanged byte for byte (or never created), nothing sent."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

from plasticity.dream.cli import main
from plasticity.memory import MemoryStore, sample_graph_path

from dream_support import FakeOpenAI


@pytest.fixture
def fake(tmp_path):
    f = FakeOpenAI(tmp_path)
    yield f
    f.close()


def dump(path) -> dict:
    with contextlib.closing(sqlite3.connect(path)) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}


def run(capsys, fake, db, *extra):
    code = main(["--db", str(db), "--server", fake.url, "--cycles", "2", *extra])
    return code, capsys.readouterr().err


@pytest.fixture
def seeded(tmp_path):
    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.import_jsonl(sample_graph_path())
    return db


def _refused(capsys, fake, db, src, match):
    before = dump(db) if db.exists() else None
    code, err = run(capsys, fake, db, "--import", str(src))
    assert code == 2 and err.startswith("plasticity dream: "), err
    assert __import__("re").search(match, err), err
    if before is not None:
        assert dump(db) == before
    assert not [p for p, _ in fake.calls if p.startswith("/v1/chat")]  # no cycle ran
    return err


def test_malformed_jsonl_line(tmp_path, capsys, fake, seeded):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "a", "text": "fine note"}\n{"id": "b", "text": \n')
    _refused(capsys, fake, seeded, src, r"bad\.jsonl.*line 2")


def test_link_to_a_missing_note(tmp_path, capsys, fake, seeded):
    src = tmp_path / "links.jsonl"
    src.write_text(json.dumps({"id": "x1", "text": "a note", "links": [{"to": "nowhere-note"}]}) + "\n")
    _refused(capsys, fake, seeded, src, r"line 1: link 0.*nowhere-note|link 0")


def test_markdown_wiki_link_to_a_missing_note(tmp_path, capsys, fake, seeded):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "loops.md").write_text("Loops repeat; see [[generatorz]].\n")
    _refused(capsys, fake, seeded, d, r"\[\[generatorz\]\] links to a missing note")


def test_wrong_types_and_bad_importance(tmp_path, capsys, fake, seeded):
    src = tmp_path / "types.jsonl"
    src.write_text(json.dumps({"text": "ok", "importance": 7}) + "\n")
    _refused(capsys, fake, seeded, src, r"importance")
    src.write_text(json.dumps({"text": ["not", "a", "string"]}) + "\n")
    _refused(capsys, fake, seeded, src, r"text")


def test_bad_import_into_a_new_store_leaves_no_file(tmp_path, capsys, fake):
    db = tmp_path / "new.sqlite"
    src = tmp_path / "bad.jsonl"
    src.write_text("not json at all\n")
    code, err = run(capsys, fake, db, "--import", str(src))
    assert code == 2 and "line 1" in err
    # the import is all-or-nothing; the loop never started
    with MemoryStore(db) as s:
        assert s.count_notes() == 0


def test_missing_import_path(tmp_path, capsys, fake, seeded):
    _refused(capsys, fake, seeded, tmp_path / "nope.jsonl", r"nope\.jsonl")


def test_store_that_is_not_sqlite(tmp_path, capsys, fake):
    db = tmp_path / "m.sqlite"
    db.write_bytes(b"these are not the bytes you are looking for" * 10)
    before = db.read_bytes()
    code, err = run(capsys, fake, db)
    assert code == 2 and "not a SQLite database" in err and db.read_bytes() == before


def test_missing_store_without_import(tmp_path, capsys, fake):
    db = tmp_path / "none.sqlite"
    code, err = run(capsys, fake, db)
    assert code == 2 and "no memory store here" in err and not db.exists()


def test_too_few_notes_for_a_walk(tmp_path, capsys, fake):
    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        s.add_note("just one note")
    code, err = run(capsys, fake, db)
    assert code == 2 and "has 1 note(s); a dream cycle needs at least walk_length = 3" in err
    code, err = run(capsys, fake, db, "--walk-length", "2")
    assert code == 2 and "needs at least walk_length = 2" in err


def test_isolated_notes_still_dream(tmp_path, capsys, fake):
    """Notes without links: the walk jumps at random (no crash, no link needed)."""
    db = tmp_path / "m.sqlite"
    with MemoryStore(db) as s:
        for i in range(4):
            s.add_note(f"isolated note number {i} about Python dictionaries and lists")
    code, err = run(capsys, fake, db, "--cycles-per-hour", "360000")
    assert code == 0, err
    with MemoryStore(db) as s:
        assert len(s.candidates()) == 2
