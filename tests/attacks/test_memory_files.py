"""Hostile database files given as the memory store.

Each is refused with MemoryStoreError when opened, and the file is left
byte-for-byte as it was (SQLite would otherwise treat some short files as empty
databases and overwrite them, or switch a foreign database to WAL).
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from plasticity.memory import SCHEMA_VERSION, MemoryStore, MemoryStoreError
from plasticity.memory import store as ms


def refused_open(path, match, **kw):
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(MemoryStoreError, match=match):
        MemoryStore(path, **kw)
    if before is not None:
        assert path.read_bytes() == before
    for side in ("-wal", "-shm", "-journal"):
        assert not path.with_name(path.name + side).exists()


def test_db_file_that_is_not_sqlite(tmp_path):
    p = tmp_path / "notes.sqlite"
    p.write_text("these are my notes, not a database\n" * 20)
    refused_open(p, "not a SQLite database")


def test_one_byte_file_is_not_overwritten(tmp_path):
    p = tmp_path / "x.sqlite"
    p.write_bytes(b"x")  # SQLite itself would treat this as an empty database
    refused_open(p, "not a SQLite database")


def test_jsonl_given_as_db(tmp_path):
    p = tmp_path / "graph.jsonl"
    p.write_bytes(ms.sample_graph_path().read_bytes())
    refused_open(p, "not a SQLite database")


def test_truncated_sqlite_file(tmp_path):
    p = tmp_path / "t.sqlite"
    with MemoryStore(p) as s:
        for i in range(200):
            s.add_note(f"note {i} " + "x" * 500)
    p.write_bytes(p.read_bytes()[:100] + b"\0" * 4000)  # header kept, pages gone
    refused_open(p, "not a readable SQLite database|database error")


def test_db_from_a_newer_schema_version(tmp_path):
    p = tmp_path / "new.sqlite"
    with MemoryStore(p) as s:
        s.add_note("written by a newer plasticity")
    with contextlib.closing(sqlite3.connect(p, isolation_level=None)) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    refused_open(p, f"schema version {SCHEMA_VERSION + 5} is newer than this plasticity knows "
                    f"\\({SCHEMA_VERSION}\\); upgrade plasticity")


def test_sqlite_db_of_another_application(tmp_path):
    p = tmp_path / "other.sqlite"
    with contextlib.closing(sqlite3.connect(p, isolation_level=None)) as c:
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        c.execute("INSERT INTO customers(name) VALUES ('x')")
    refused_open(p, "other tables \\(customers\\), not a plasticity memory store")


def test_sqlite_db_with_another_application_id(tmp_path):
    p = tmp_path / "app.sqlite"
    with contextlib.closing(sqlite3.connect(p, isolation_level=None)) as c:
        c.execute("PRAGMA application_id = 1234")
        c.execute("PRAGMA user_version = 1")
    refused_open(p, "another application \\(application_id 0x4d2\\)")


def test_db_path_is_a_directory(tmp_path):
    refused_open(tmp_path, "is a directory")


def test_db_in_a_missing_folder(tmp_path):
    p = tmp_path / "no" / "such" / "m.sqlite"
    refused_open(p, "does not exist")
    assert not (tmp_path / "no").exists()


def test_missing_db_when_create_is_off(tmp_path):
    p = tmp_path / "absent.sqlite"
    refused_open(p, "no memory store here", create=False)
    assert not p.exists()


def test_empty_file_becomes_a_store(tmp_path):
    # Not an attack: a zero-byte file (e.g. from mktemp) is a valid empty database.
    p = tmp_path / "empty.sqlite"
    p.write_bytes(b"")
    with MemoryStore(p) as s:
        assert s.schema_version == SCHEMA_VERSION


def test_locked_database_gives_a_clear_error(tmp_path):
    p = tmp_path / "locked.sqlite"
    MemoryStore(p).close()
    holder = sqlite3.connect(p, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        s = MemoryStore(p, busy_timeout=0.2)
        before = s.count_notes()
        with pytest.raises(MemoryStoreError, match="busy|locked"):
            s.add_note("waits, then gives up")
        assert s.count_notes() == before
        s.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
