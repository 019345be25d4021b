"""The memory store's SQLite schema: the file's marks (``application_id``) and the ordered
migrations (``user_version`` is the schema version). See :mod:`plasticity.memory.store`."""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Callable

APPLICATION_ID = 0x504C4D53  # "PLMS": a plasticity memory store
SQLITE_MAGIC = b"SQLite format 3\x00"


_V1 = [
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT""",
    """CREATE TABLE notes (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        key        TEXT UNIQUE CHECK (key IS NULL OR length(key) BETWEEN 1 AND 200),
        text       TEXT NOT NULL CHECK (length(trim(text)) > 0),
        importance REAL NOT NULL DEFAULT 0.5 CHECK (importance >= 0.0 AND importance <= 1.0),
        source     TEXT NOT NULL DEFAULT 'manual',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) STRICT""",
    """CREATE TABLE note_tags (
        note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        tag     TEXT NOT NULL CHECK (length(tag) BETWEEN 1 AND 64),
        PRIMARY KEY (note_id, tag)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX note_tags_by_tag ON note_tags(tag, note_id)",
    "CREATE INDEX notes_by_created ON notes(created_at)",
    """CREATE TABLE links (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        src        INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        dst        INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        type       TEXT NOT NULL DEFAULT 'related' CHECK (length(type) BETWEEN 1 AND 32),
        weight     REAL NOT NULL DEFAULT 1.0 CHECK (weight > 0.0 AND weight <= 1e6),
        created_at REAL NOT NULL,
        UNIQUE (src, dst, type),
        CHECK (src <> dst)
    ) STRICT""",
    "CREATE INDEX links_by_dst ON links(dst)",
]

_V2 = [
    """CREATE TABLE cycles (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at  REAL NOT NULL,
        finished_at REAL,
        status      TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
        config      TEXT CHECK (config IS NULL OR json_valid(config))
    ) STRICT""",
    """CREATE TABLE candidates (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        cycle_id   INTEGER NOT NULL REFERENCES cycles(id) ON DELETE CASCADE,
        memory_ids TEXT NOT NULL CHECK (json_valid(memory_ids) AND json_type(memory_ids) = 'array'),
        scenario   TEXT NOT NULL,
        response   TEXT NOT NULL,
        score      REAL,
        accepted   INTEGER NOT NULL CHECK (accepted IN (0, 1)),
        reason     TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    ) STRICT""",
    "CREATE INDEX candidates_by_cycle ON candidates(cycle_id, id)",
    """CREATE TABLE train_queue (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        candidate_id INTEGER NOT NULL UNIQUE REFERENCES candidates(id) ON DELETE RESTRICT,
        journal_id   TEXT NOT NULL UNIQUE,
        context      TEXT NOT NULL CHECK (json_valid(context)),
        decision     TEXT NOT NULL CHECK (length(trim(decision)) > 0),
        state        TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'journaled', 'trained')),
        updated_at   REAL NOT NULL
    ) STRICT""",
    "CREATE INDEX train_queue_by_state ON train_queue(state, id)",
    # Only accepted candidates are queued.
    """CREATE TRIGGER train_queue_accepted_only BEFORE INSERT ON train_queue
       WHEN (SELECT accepted FROM candidates WHERE id = NEW.candidate_id) IS NOT 1
       BEGIN SELECT RAISE(ABORT, 'train_queue: candidate is not accepted'); END""",
    # States only move forward: queued -> journaled -> trained (queued -> trained allowed).
    """CREATE TRIGGER train_queue_forward_only BEFORE UPDATE OF state ON train_queue
       WHEN (CASE NEW.state WHEN 'queued' THEN 0 WHEN 'journaled' THEN 1 ELSE 2 END)
          <= (CASE OLD.state WHEN 'queued' THEN 0 WHEN 'journaled' THEN 1 ELSE 2 END)
        AND NEW.state <> OLD.state
       BEGIN SELECT RAISE(ABORT, 'train_queue: state can only move forward'); END""",
    """CREATE TRIGGER train_queue_fixed_identity BEFORE UPDATE OF candidate_id, journal_id, context, decision
       ON train_queue
       WHEN NEW.candidate_id IS NOT OLD.candidate_id OR NEW.journal_id IS NOT OLD.journal_id
         OR NEW.context IS NOT OLD.context OR NEW.decision IS NOT OLD.decision
       BEGIN SELECT RAISE(ABORT, 'train_queue: a queued example cannot be changed'); END""",
]


def _run(statements: list[str]) -> Callable[[sqlite3.Connection], None]:
    def migrate(conn: sqlite3.Connection) -> None:
        # One statement at a time: executescript() would COMMIT the open transaction.
        for s in statements:
            conn.execute(s)

    return migrate


def _m1(conn: sqlite3.Connection) -> None:
    """Version 1: notes, tags, links, meta (with this store's id)."""
    _run(_V1)(conn)
    conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
    conn.execute("INSERT INTO meta(key, value) VALUES ('created_at', ?)", (repr(time.time()),))


def _m2(conn: sqlite3.Connection) -> None:
    """Version 2: dream cycles, candidates, train queue."""
    _run(_V2)(conn)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1, _m2]
SCHEMA_VERSION = len(MIGRATIONS)
