"""The dream loop's memory store (plasticity.memory): a real SQLite file on disk, no mocks.

Round trips, migrations of an existing older file, random walks, JSONL/Markdown
imports, conversation capture, the exactly-once train queue, the CLI, and two
writers on one file. Hostile inputs are in tests/attacks/test_memory_*.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from plasticity.memory import store as ms
from plasticity.memory import MemoryStore, MemoryStoreError, SCHEMA_VERSION, sample_graph_path
from plasticity.memory.cli import add_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "memory.sqlite"


@pytest.fixture
def store(db):
    s = MemoryStore(db)
    yield s
    s.close()


@pytest.fixture
def graph(store):
    store.import_jsonl(sample_graph_path())
    return store


# --------------------------------------------------------------------------- notes and links

def test_note_round_trip_survives_reopen(db):
    with MemoryStore(db) as s:
        n = s.add_note("Generators pause at yield.", ["python", "iteration", "python"], 0.8, key="gen")
        assert n.id == 1 and n.tags == ("iteration", "python") and n.importance == 0.8
        assert n.source == "manual" and n.key == "gen" and n.created_at == n.updated_at
        m = s.add_note("A second note")
        assert m.importance == ms.DEFAULT_IMPORTANCE and m.tags == () and m.key is None
    with MemoryStore(db) as s:
        assert s.get_note(1) == n
        assert s.get_note("gen") == n
        assert s.find_note(99) is None
        u = s.update_note("gen", text="Generators pause at each yield.", tags=["gen"], importance=0.25)
        assert (u.text, u.tags, u.importance, u.created_at) == ("Generators pause at each yield.", ("gen",),
                                                                  0.25, n.created_at)
        assert u.updated_at >= n.updated_at
        s.delete_note(1)
        assert s.find_note(1) is None and s.count_notes() == 1
        with pytest.raises(MemoryStoreError, match="no note with id 1"):
            s.delete_note(1)
        # AUTOINCREMENT: a deleted id is never reused (candidates refer to note ids).
        assert s.add_note("third").id == 3


def test_created_at_accepts_iso_and_unix(store):
    a = store.add_note("old", created_at="2024-01-02T03:04:05+00:00")
    b = store.add_note("older", created_at=1000.0)
    assert a.created_at == 1704164645.0 and b.created_at == 1000.0


def test_list_notes_tag_limit_offset_order(store):
    for i in range(10):
        store.add_note(f"note {i}", ["even" if i % 2 == 0 else "odd", "all"], importance=i / 10)
    assert [n.text for n in store.list_notes(tag="even")] == [f"note {i}" for i in range(0, 10, 2)]
    assert [n.id for n in store.list_notes(limit=3, offset=2)] == [3, 4, 5]
    assert [n.importance for n in store.list_notes(order="-importance", limit=2)] == [0.9, 0.8]
    assert [n.id for n in store.list_notes(order="-id", limit=1)] == [10]
    assert len(store.list_notes(limit=None)) == 10
    assert store.list_notes(tag="nothing") == []
    assert store.tags() == {"all": 10, "even": 5, "odd": 5}
    with pytest.raises(MemoryStoreError, match="unknown order"):
        store.list_notes(order="id; DROP TABLE notes")


def test_links_round_trip_and_cascade(store):
    a, b, c = (store.add_note(t, ["t"]) for t in ("a", "b", "c"))
    l1 = store.add_link(a.id, b.id, "causes", 2.5)
    store.add_link(c.id, a.id)  # default type
    store.add_link(a.id, b.id, "contrasts")  # same pair, another type
    assert (l1.src, l1.dst, l1.type, l1.weight) == (a.id, b.id, "causes", 2.5)
    assert [l.type for l in store.links_of(a.id, "out")] == ["causes", "contrasts"]
    assert [l.type for l in store.links_of(a.id, "in")] == ["related"]
    assert len(store.links_of(a.id)) == 3
    assert [n.id for n in store.neighbours(a.id)] == [b.id, c.id]
    store.delete_note(a.id)
    assert store.count_links() == 0
    assert store.tags() == {"t": 2}
    with contextlib.closing(sqlite3.connect(store.path)) as raw:
        assert raw.execute("SELECT count(*) FROM note_tags").fetchone()[0] == 2


def test_links_by_key(store):
    store.add_note("x", key="x")
    store.add_note("y", key="y")
    l = store.add_link("x", "y", "mentions")
    assert (l.src, l.dst) == (1, 2)


def test_connection_settings(store):
    c = store._conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA application_id").fetchone()[0] == ms.APPLICATION_ID
    assert store.schema_version == SCHEMA_VERSION == len(ms.MIGRATIONS)
    assert store.integrity_check() == "ok"
    assert len(store.store_id) == 32


# --------------------------------------------------------------------------- migrations

def _make_v1_file(path: Path) -> None:
    """A file as version 1 of the code left it, with some data."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    ms.MIGRATIONS[0](c)
    c.execute("PRAGMA user_version = 1")
    c.execute(f"PRAGMA application_id = {ms.APPLICATION_ID}")
    c.execute("INSERT INTO notes(key, text, importance, source, created_at, updated_at) "
              "VALUES ('old', 'written by v1', 0.4, 'manual', 1.0, 1.0), (NULL, 'second', 0.6, 'cli', 2.0, 2.0)")
    c.execute("INSERT INTO note_tags VALUES (1, 'legacy')")
    c.execute("INSERT INTO links(src, dst, type, weight, created_at) VALUES (1, 2, 'related', 1.0, 3.0)")
    c.execute("COMMIT")
    c.close()


def test_migrates_an_existing_v1_file(tmp_path):
    path = tmp_path / "v1.sqlite"
    _make_v1_file(path)
    with contextlib.closing(sqlite3.connect(path)) as raw:
        store_id = raw.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'train_queue'").fetchone()[0] == 0
    with MemoryStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.store_id == store_id
        n = s.get_note("old")
        assert (n.text, n.tags, n.importance, n.created_at) == ("written by v1", ("legacy",), 0.4, 1.0)
        assert [(l.src, l.dst) for l in s.links_of(1)] == [(1, 2)]
        # the v2 tables work on the migrated file
        cyc = s.start_cycle()
        cand = s.add_candidate(cyc, [1, 2], "scenario", "response", 0.9, True, "ok")
        assert cand.queue_state == "queued"
    with MemoryStore(path) as s:  # reopening an up-to-date file changes nothing
        assert s.schema_version == SCHEMA_VERSION and len(s.candidates()) == 1


def test_failed_migration_rolls_back_and_keeps_the_old_version(tmp_path, monkeypatch):
    path = tmp_path / "m.sqlite"
    MemoryStore(path).close()

    def bad(conn):
        conn.execute("CREATE TABLE half_done (x INT)")
        conn.execute("THIS IS NOT SQL")

    monkeypatch.setattr(ms, "MIGRATIONS", ms.MIGRATIONS + [bad])
    monkeypatch.setattr(ms, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(MemoryStoreError, match=f"migration to schema version {SCHEMA_VERSION + 1} failed"):
        MemoryStore(path)
    monkeypatch.undo()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    with MemoryStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("round_", range(8))
def test_concurrent_openers_create_and_migrate_once(tmp_path, round_):
    """Openers racing on a new file: one creates the schema, none mistakes the half-seen result for
    a foreign database (CI once saw 'a SQLite database with other tables' here: the identity was read
    in three statements that straddled the creator's commit)."""
    path = tmp_path / "race.sqlite"
    errors, ids = [], []
    start = threading.Barrier(8)

    def opener():
        start.wait()
        try:
            with MemoryStore(path) as s:
                ids.append(s.store_id)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ids) == 8 and len(set(ids)) == 1
    with MemoryStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION


# --------------------------------------------------------------------------- random walk

def test_random_walk_is_deterministic_and_distinct(graph):
    walks = set()
    for seed in range(60):
        for length in (2, 3):
            a = graph.walk(random.Random(seed), length)
            b = graph.walk(random.Random(seed), length)
            assert [s.note.id for s in a] == [s.note.id for s in b]
            ids = [s.note.id for s in a]
            assert len(ids) == length == len(set(ids))
            assert a[0].how == "start"
            for prev, step in zip(a, a[1:]):
                if step.how == "link":  # a real neighbour of the previous note
                    assert step.note.id in {n.id for n in graph.neighbours(prev.note.id)}
            walks.add(tuple(ids))
    assert len(walks) > 40  # diverse collisions, not the same few notes
    notes = graph.random_walk(random.Random(7), 3)
    assert [n.id for n in notes] == [s.note.id for s in graph.walk(random.Random(7), 3)]


def test_random_walk_follows_link_weights(store):
    hub = store.add_note("hub", importance=0.5)
    heavy = store.add_note("heavy", importance=0.5)
    light = store.add_note("light", importance=0.5)
    store.add_link(hub.id, heavy.id, weight=100.0)
    store.add_link(light.id, hub.id, weight=0.01)  # walked backwards too
    picks = [store.walk(random.Random(s), 2, start=hub.id)[1].note.id for s in range(200)]
    assert picks.count(heavy.id) >= 195


def test_random_walk_backtracks_then_jumps(store):
    a, b, c = (store.add_note(t) for t in ("a", "b", "c"))
    store.add_link(a.id, b.id)
    store.add_link(a.id, c.id)
    for seed in range(10):
        steps = store.walk(random.Random(seed), 3, start=a.id)
        assert [s.how for s in steps] == ["start", "link", "backtrack"]
        assert {s.note.id for s in steps} == {1, 2, 3}
    d = store.add_note("isolated")
    steps = store.walk(random.Random(0), 4, start=a.id)
    assert steps[-1].how == "random" and steps[-1].note.id == d.id


def test_random_walk_without_links_picks_random_notes(store):
    for i in range(5):
        store.add_note(f"n{i}", importance=0.0)
    steps = store.walk(random.Random(3), 3)
    assert [s.how for s in steps] == ["start", "random", "random"]
    assert len({s.note.id for s in steps}) == 3


def test_random_walk_errors(store):
    store.add_note("only one")
    with pytest.raises(MemoryStoreError, match="needs at least 2 notes"):
        store.random_walk(random.Random(0), 2)
    store.add_note("two")
    with pytest.raises(MemoryStoreError, match="no note with id 9"):
        store.random_walk(random.Random(0), 2, start=9)
    with pytest.raises(MemoryStoreError, match="walk length"):
        store.random_walk(random.Random(0), 0)


# --------------------------------------------------------------------------- imports

def test_import_sample_graph(store):
    r = store.import_jsonl(sample_graph_path())
    assert len(r.note_ids) == store.count_notes() >= 30 and r.links == store.count_links() >= 55
    n = store.get_note("for-loop")
    assert n.source == "import:jsonl" and "loops" in n.tags
    assert {l.type for l in store.links_of("generators")} >= {"example_of", "part_of"}
    # every note is connected, so walks mostly follow links
    assert all(store.links_of(i) for i in r.note_ids)


def test_sample_graph_is_package_data():
    p = sample_graph_path()
    assert p.is_file() and p.parent.parent == Path(ms.__file__).parent
    lines = p.read_text(encoding="utf-8").splitlines()
    assert 30 <= len(lines) <= 40
    assert sum(len(json.loads(l).get("links", [])) for l in lines) >= 55


def test_import_jsonl_links_within_file_and_to_existing_notes(store, tmp_path):
    store.add_note("existing by key", key="ext")
    store.add_note("existing by id")
    f = tmp_path / "n.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"id": 7, "text": "seven", "tags": ["a"], "importance": 1, "links": [{"to": "b", "type": "causes"}]},
        {"id": "b", "text": "bee", "links": [{"to": 7, "weight": 3}, {"to": "ext"}, {"to": 2, "type": "x"}]},
        {"text": "no key", "created_at": "2020-01-01T00:00:00Z", "source": "notes-app"},
    ]) + "\n\n", encoding="utf-8")
    r = store.import_jsonl(f)
    assert r.note_ids == (3, 4, 5) and r.links == 4
    assert store.get_note("7").text == "seven"  # ids are keys, stored as strings
    assert [(l.dst, l.type, l.weight) for l in store.links_of("b", "out")] == [(3, "related", 3.0),
                                                                                (1, "related", 1.0),
                                                                                (2, "x", 1.0)]
    assert store.get_note(5).source == "notes-app"


def test_import_jsonl_tolerates_bom_and_crlf(store, tmp_path):
    f = tmp_path / "w.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"text": "one"}\r\n{"text": "two"}\r\n')
    assert store.import_jsonl(f).note_ids == (1, 2)


def test_import_markdown_dir(store, tmp_path):
    d = tmp_path / "vault"
    (d / "sub").mkdir(parents=True)
    (d / ".obsidian").mkdir()
    (d / ".obsidian" / "ignored.md").write_text("not a note")
    (d / "Loops.md").write_text("---\ntags: [control-flow, loops]\nimportance: 0.9\ntitle: x\n---\n"
                                "for and while. See [[generators|gens]] and [[Loops]] and [[generators#yield]].\n")
    (d / "sub" / "generators.md").write_text("---\ntags:\n  - iteration\n  - '#functions'\n---\n"
                                             "Generators are lazy; they feed [[loops]].\n")  # case-insensitive
    (d / "plain.md").write_text("No front matter, links to [[existing]].\n", encoding="utf-8")
    store.add_note("already here", key="existing")
    r = store.import_markdown_dir(d)
    assert len(r.note_ids) == 3 and r.links == 3
    loops = store.get_note("Loops")
    assert loops.tags == ("control-flow", "loops") and loops.importance == 0.9
    assert loops.text.startswith("for and while.") and loops.source == "import:markdown"
    assert store.get_note("generators").tags == ("functions", "iteration")
    assert store.get_note("plain").importance == ms.DEFAULT_IMPORTANCE
    out = {(store.get_note(l.src).key, store.get_note(l.dst).key, l.type) for l in store.links_of("generators")}
    assert out == {("Loops", "generators", "mentions"), ("generators", "Loops", "mentions")}
    assert [store.get_note(l.dst).key for l in store.links_of("plain", "out")] == ["existing"]


def test_import_path_dispatch(store, tmp_path):
    d = tmp_path / "md"
    d.mkdir()
    (d / "a.md").write_text("alpha")
    f = tmp_path / "n.jsonl"
    f.write_text('{"text": "beta"}\n')
    assert len(store.import_path(d).note_ids) == 1
    assert len(store.import_path(f).note_ids) == 1
    with pytest.raises(MemoryStoreError, match="no such file"):
        store.import_path(tmp_path / "missing")


# --------------------------------------------------------------------------- capture

def test_capture_conversation(store):
    n = store.capture_conversation([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "What is a dict?"}]}],
                                   "A mapping from keys to values.", tags=["conversation", "chat"])
    assert n.source == "conversation" and n.tags == ("chat", "conversation") and n.importance == 0.3
    assert n.text == "system: Be brief.\nuser: What is a dict?\nassistant: A mapping from keys to values."
    m = store.capture_conversation("def f(): pass", "A function.")
    assert m.text == "user: def f(): pass\nassistant: A function."
    assert [x.id for x in store.list_notes(source="conversation")] == [n.id, m.id]


# --------------------------------------------------------------------------- cycles, candidates, queue

def test_candidates_are_kept_with_score_and_reason(store):
    store.add_note("a")
    store.add_note("b")
    cyc = store.start_cycle({"temperature": 1.1, "seed": 3})
    good = store.add_candidate(cyc, [1, 2], "Scenario one", "Response one", 0.91, True, "novel, on topic")
    bad = store.add_candidate(cyc, [2, 1], "Scenario two", "Response two", 0.12, False, "near-duplicate")
    store.finish_cycle(cyc)
    assert good.queue_state == "queued" and bad.queue_state is None
    assert [c.reason for c in store.candidates(cyc)] == ["novel, on topic", "near-duplicate"]
    assert [c.id for c in store.candidates(accepted=True)] == [good.id]
    cy = store.cycles()[0]
    assert cy["status"] == "done" and cy["config"] == {"seed": 3, "temperature": 1.1} and cy["finished_at"]
    q = store.queue()
    assert len(q) == 1 and q[0].candidate_id == good.id and q[0].context == "Scenario one"
    assert q[0].decision == "Response one" and q[0].journal_id == store.journal_id(good.id)
    msgs = [{"role": "user", "content": "Scenario three"}]
    c3 = store.add_candidate(cyc, [1], "Scenario three", "R3", None, True, context=msgs, decision="D3")
    assert store.queue()[-1].context == msgs and store.queue()[-1].decision == "D3" and c3.score is None
    with pytest.raises(MemoryStoreError, match="no running cycle"):
        store.finish_cycle(cyc)


def test_exactly_once_queue_across_a_crash(db, tmp_path):
    """queued -> journaled -> trained with a crash between journal append and mark_journaled."""
    from plasticity.training.core import Journal

    journal = Journal(tmp_path / "training-journal.jsonl")
    done = Journal(tmp_path / "training-journal.jsonl.done")

    def submit(s: MemoryStore, crash_before_mark=False):
        in_journal = {r["id"] for r in journal.read()}
        s.reconcile_queue(journaled_ids=in_journal)  # appended before a crash: don't append again
        for item in s.queue("queued"):
            journal.append([{"id": item.journal_id, "context": item.context, "decision": item.decision}])
            if crash_before_mark:
                return
            s.mark_journaled([item.id])

    with MemoryStore(db) as s:
        s.add_note("m")
        cyc = s.start_cycle()
        acc = [s.add_candidate(cyc, [1], f"scenario {i}", f"response {i}", 0.9, True) for i in range(3)]
        s.add_candidate(cyc, [1], "rejected", "r", 0.1, False)
        submit(s, crash_before_mark=True)  # first one appended, then the process dies
    with MemoryStore(db) as s:  # restart
        assert s.queue_counts() == {"queued": 3, "journaled": 0, "trained": 0}
        submit(s)
        submit(s)  # idempotent
        assert s.queue_counts() == {"queued": 0, "journaled": 3, "trained": 0}
        ids = [r["id"] for r in journal.read()]
        assert sorted(ids) == sorted(s.journal_id(c.id) for c in acc)  # each exactly once, rejected absent
        # the trainer trains two, the done journal says so, then another crash + restart
        done.append([{"id": ids[0], "step": 1}, {"id": ids[1], "step": 2}])
    with MemoryStore(db) as s:
        moved = s.reconcile_queue(journaled_ids=ids, trained_ids=[r["id"] for r in done.read()])
        assert moved == {"journaled": 0, "trained": 2}
        assert s.queue_counts() == {"queued": 0, "journaled": 1, "trained": 2}
        assert s.mark_journaled([q.id for q in s.queue("trained")]) == 0  # never backwards
        assert s.queue("queued") == []
        assert [c.queue_state for c in s.candidates(accepted=True)] == ["trained", "trained", "journaled"]


def test_queue_state_only_moves_forward_even_in_raw_sql(store):
    store.add_note("m")
    cyc = store.start_cycle()
    c = store.add_candidate(cyc, [1], "s", "r", 1.0, True)
    store.mark_trained([store.journal_id(c.id)])
    with pytest.raises(sqlite3.IntegrityError, match="only move forward"):
        store._conn.execute("UPDATE train_queue SET state = 'queued'")
    with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        store._conn.execute("UPDATE train_queue SET decision = 'other'")
    r = store.add_candidate(cyc, [1], "s2", "r2", 0.0, False)
    with pytest.raises(sqlite3.IntegrityError, match="not accepted"):
        store._conn.execute("INSERT INTO train_queue(candidate_id, journal_id, context, decision, updated_at) "
                            "VALUES (?, 'x', '\"s\"', 'd', 0)", (r.id,))
    with pytest.raises(sqlite3.IntegrityError):  # one queue row per candidate
        store._conn.execute("INSERT INTO train_queue(candidate_id, journal_id, context, decision, updated_at) "
                            "VALUES (?, 'y', '\"s\"', 'd', 0)", (c.id,))
    with pytest.raises(sqlite3.IntegrityError):  # a cycle with queued examples cannot be deleted
        store._conn.execute("DELETE FROM cycles")
    assert store.queue_counts() == {"queued": 0, "journaled": 0, "trained": 1}


# --------------------------------------------------------------------------- CLI

def _cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_add_link_list_show(db, capsys):
    assert _cli("memory", "--db", str(db), "add", "A for loop iterates.", "--tag", "loops", "--tag", "py",
                "--importance", "0.8", "--key", "for") == 0
    assert capsys.readouterr().out.strip() == "added note 1"
    assert _cli("memory", "add", "While repeats.", "--db", str(db), "--json") == 0  # --db after the command
    assert json.loads(capsys.readouterr().out)["id"] == 2
    assert _cli("memory", "--db", str(db), "link", "for", "2", "--type", "contrasts", "--weight", "2") == 0
    assert "linked 1 -[contrasts]-> 2" in capsys.readouterr().out
    assert _cli("memory", "--db", str(db), "list") == 0
    out = capsys.readouterr().out
    assert "A for loop iterates." in out and "[for]" in out and "2 notes" in out
    assert _cli("memory", "--db", str(db), "list", "--tag", "loops", "--json") == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [1] and rows[0]["tags"] == ["loops", "py"] and rows[0]["source"] == "cli"
    assert _cli("memory", "--db", str(db), "show", "1") == 0
    out = capsys.readouterr().out
    assert "note 1 [for]" in out and "-[contrasts]-> 2" in out
    assert _cli("memory", "--db", str(db), "show", "2", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["note"]["text"] == "While repeats." and shown["links"][0]["src"] == 1


def test_cli_import_and_walk(db, capsys, tmp_path):
    assert _cli("memory", "--db", str(db), "import", str(sample_graph_path())) == 0
    assert "imported 38 notes and 65 links" in capsys.readouterr().out
    assert _cli("memory", "--db", str(db), "walk", "--seed", "1", "--json") == 0
    first = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert _cli("memory", "--db", str(db), "walk", "--seed", "1", "--json") == 0
    assert [json.loads(l) for l in capsys.readouterr().out.splitlines()] == first
    assert len({r["id"] for r in first}) == 3 and first[0]["how"] == "start"
    md = tmp_path / "md"
    md.mkdir()
    (md / "n.md").write_text("a markdown note mentioning [[for-loop]]")
    assert _cli("memory", "--db", str(db), "import", str(md)) == 0
    assert "imported 1 notes and 1 links" in capsys.readouterr().out


def test_cli_default_db_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLASTICITY_MEMORY_DB", str(tmp_path / "env.sqlite"))
    assert _cli("memory", "add", "from env") == 0
    assert (tmp_path / "env.sqlite").exists()
    monkeypatch.delenv("PLASTICITY_MEMORY_DB")
    monkeypatch.chdir(tmp_path)
    assert _cli("memory", "add", "in cwd") == 0
    assert (tmp_path / "plasticity-memory.sqlite").exists()


def test_cli_errors_exit_2_with_a_message(db, capsys, tmp_path):
    assert _cli("memory", "--db", str(db), "list") == 2
    assert "no memory store" in capsys.readouterr().err and not db.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": ""}\n')
    assert _cli("memory", "--db", str(db), "import", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("plasticity memory: ") and "line 2" in err and "empty" in err
    assert not db.exists()  # a failed first import leaves no store behind
    assert _cli("memory", "--db", str(db), "add", "x") == 0
    capsys.readouterr()
    assert _cli("memory", "--db", str(db), "link", "1", "5") == 2
    assert "no note with id 5" in capsys.readouterr().err
    assert _cli("memory", "--db", str(db), "show", "nokey") == 2
    assert "no note with key 'nokey'" in capsys.readouterr().err
    assert _cli("memory", "--db", str(db), "add", "y", "--importance", "2") == 2
    assert "importance" in capsys.readouterr().err
    assert _cli("memory", "--db", str(db), "walk", "--length", "3") == 2
    assert "needs at least 3 notes" in capsys.readouterr().err
    assert db.exists() and MemoryStore(db).count_notes() == 1


# --------------------------------------------------------------------------- concurrency

def test_two_connections_writing_at_once(db):
    a, b = MemoryStore(db), MemoryStore(db)
    errors = []

    def writer(s: MemoryStore, name: str):
        try:
            prev = None
            for i in range(60):
                n = s.add_note(f"{name} {i}", [name])
                if prev is not None:
                    s.add_link(prev, n.id)
                prev = n.id
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s, name)) for s, name in ((a, "a"), (b, "b"), (a, "a2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert a.count_notes() == b.count_notes() == 180 and b.count_links() == 177
    assert b.tags() == {"a": 60, "a2": 60, "b": 60}
    assert a.integrity_check() == "ok"
    a.close()
    b.close()


def test_two_processes_writing_at_once(db):
    MemoryStore(db).close()
    code = ("import sys\nfrom plasticity.memory import MemoryStore\n"
            "s = MemoryStore(sys.argv[1])\n"
            "for i in range(40):\n    s.add_note(f'{sys.argv[2]} {i}', [sys.argv[2]])\n")
    # the child imports plasticity exactly as this process does (installed wheel or source tree)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), tag], env=env) for tag in ("p1", "p2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with MemoryStore(db) as s:
        assert s.tags() == {"p1": 40, "p2": 40} and s.integrity_check() == "ok"
