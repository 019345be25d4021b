"""The memory store of the dream loop: one SQLite file.

This module is the store itself (:class:`MemoryStore`); beside it, ``records.py`` holds what it
hands out and its error, ``schema.py`` the tables and migrations, ``checks.py`` the checks every
input passes before it reaches SQL.

Contents
--------
- ``notes``: text, optional unique ``key`` (the name imports and ``[[wiki links]]``
  refer to), importance in [0, 1], ``source`` (``manual``, ``cli``,
  ``import:jsonl``, ``import:markdown``, ``conversation``), created/updated
  timestamps (unix seconds). Tags live in ``note_tags`` (one row per tag, indexed
  by tag).
- ``links``: typed, weighted, directed edges ``src -[type]-> dst``; unique per
  ``(src, dst, type)``, never a self-link, deleted with either end (foreign keys
  with ``ON DELETE CASCADE``).
- ``cycles``, ``candidates``, ``train_queue``: the dream loop's bookkeeping. Every
  generated candidate is kept with its score and reason for inspection; accepted
  ones get one ``train_queue`` row.

Connections
-----------
Every connection runs in WAL mode with ``foreign_keys = ON``, a ``busy_timeout``
and ``synchronous = FULL`` (a commit survives a power cut, not only a process
crash). Writes use ``BEGIN IMMEDIATE`` so two writers (threads or processes)
queue on the busy timeout instead of failing on a lock upgrade. One
:class:`MemoryStore` may be shared between threads (an internal lock serialises
its connection); every process opens its own.

Migrations
----------
``PRAGMA user_version`` is the schema version, ``PRAGMA application_id`` marks
the file as a plasticity memory store. :data:`MIGRATIONS` is an ordered list of
migration functions; opening a file applies the missing ones, each in its own
``BEGIN IMMEDIATE`` transaction together with the ``user_version`` bump (DDL and
both pragmas are transactional in SQLite), so a failed migration leaves the file
at the previous version. A file whose version is newer than this code knows, a
file that is not SQLite, or a SQLite file of another application is refused
with :class:`MemoryStoreError` and left untouched.

Exactly-once training of accepted scenarios
-------------------------------------------
A ``train_queue`` row moves only forward, ``queued -> journaled -> trained``
(a trigger refuses any other transition), and carries a ``journal_id`` that is
fixed when the row is created (``mem-<store id>-<candidate id>``), unique, and
is the id of the example in the training journal.

1. The judge accepts a candidate: :meth:`MemoryStore.add_candidate` inserts the
   candidate and its queue row (``queued``) in one transaction. A crash before the
   commit leaves neither; ``candidate_id UNIQUE`` allows one row per candidate.
2. The submitter takes :meth:`MemoryStore.queue` (``queued`` rows), appends each
   to the training journal under its ``journal_id`` (fsync'd), *then* calls
   :meth:`MemoryStore.mark_journaled`. After a crash between the two, the row is
   still ``queued``: before appending again the submitter checks whether the
   journal already holds that ``journal_id`` (:meth:`reconcile_queue` does this
   from the journal's ids); and even a second record with the same id is trained
   once, because the trainer skips ids it has seen and its recovery subtracts the
   done-journal by id.
3. When the trainer reports an id trained (its done journal),
   :meth:`MemoryStore.mark_trained` / :meth:`reconcile_queue` moves the row to
   ``trained``. A ``trained`` or ``journaled`` row is never handed out again.

So an accepted scenario reaches the journal under exactly one id and the
trainer trains that id exactly once, across restarts of either side.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from .checks import (
    DEFAULT_IMPORTANCE,
    DEFAULT_LINK_TYPE,
    DEFAULT_MAX_IMPORT_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    JSONL_FIELDS,
    JSONL_LINK_FIELDS,
    MARKDOWN_LINK_TYPE,
    MAX_WALK,
    NOTE_ORDERS,
    QUEUE_STATES,
    WALK_EPS,
    WIKI_RE,
    _check_id,
    _check_importance,
    _check_key,
    _check_link_type,
    _check_source,
    _check_tags,
    _check_text,
    _check_time,
    _check_weight,
    _decode,
    _err,
    _is_number,
    _parse_front_matter,
    _read_bytes,
    _reject_constant,
    _weighted_choice,
)
from .records import Candidate, ImportResult, Link, MemoryStoreError, Note, QueueItem, WalkStep
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SQLITE_MAGIC


def sample_graph_path() -> Path:
    """The small memory graph shipped with plasticity (Python-language topics, JSONL)."""
    return Path(__file__).with_name("data") / "sample_graph.jsonl"


class MemoryStore:
    """Notes, links and the dream loop's queue in one SQLite file (created if missing).

    ``max_text_chars`` bounds every note, scenario and response; ``busy_timeout``
    (seconds) is how long a write waits for another writer; ``create=False``
    refuses a missing file instead of creating it.
    """

    def __init__(self, path: str | os.PathLike, *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                 busy_timeout: float = 10.0, max_import_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
                 create: bool = True):
        self.path = Path(path)
        self.max_text_chars = int(max_text_chars)
        self.max_import_bytes = int(max_import_bytes)
        self._lock = threading.RLock()
        self._depth = 0
        self._check_file(create)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as e:
            raise MemoryStoreError(f"{self.path}: cannot open: {e}") from None
        try:
            self._open(busy_timeout)
        except BaseException:
            self._conn.close()
            raise
        self.store_id = self._conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]

    # ---- opening ----
    def _check_file(self, create: bool) -> None:
        p = self.path
        if not create and not p.exists():
            raise MemoryStoreError(f"{p}: no memory store here (add or import notes to create one)")
        if p.is_dir():
            raise MemoryStoreError(f"{p}: is a directory, not a memory store file")
        if not p.parent.is_dir():
            raise MemoryStoreError(f"{p}: folder {p.parent} does not exist")
        if p.exists():
            try:
                with open(p, "rb") as f:
                    head = f.read(len(SQLITE_MAGIC))
            except OSError as e:
                raise MemoryStoreError(f"{p}: cannot read: {e.strerror or e}") from None
            # SQLite itself treats some short non-database files as empty databases and would
            # overwrite them; refuse anything that is neither empty nor a SQLite file.
            if head and head != SQLITE_MAGIC:
                raise MemoryStoreError(f"{p}: not a SQLite database (bad header)")

    def _open(self, busy_timeout: float) -> None:
        c = self._conn
        try:
            # One read transaction: three separate reads could straddle another opener's creation
            # of the schema (no tables and version 0, then its tables) and refuse a fresh store.
            c.execute("BEGIN")
            try:
                identity = self._identity(c)
            finally:
                c.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise MemoryStoreError(f"{self.path}: not a readable SQLite database ({e})") from None
        self._check_identity(*identity)
        c.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        c.execute("PRAGMA foreign_keys = ON")
        # Switching a fresh file to WAL needs an exclusive lock, and SQLite may answer "locked"
        # without waiting on busy_timeout while other openers hold a read lock: retry until it.
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                c.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() >= deadline:
                    raise MemoryStoreError(f"{self.path}: cannot switch to WAL mode: {e}") from None
                time.sleep(0.005)
        c.execute("PRAGMA synchronous = FULL")
        self._migrate()

    @staticmethod
    def _identity(c) -> tuple[int, int, list[str]]:
        """(application_id, user_version, table names); call inside a transaction for one snapshot."""
        return (c.execute("PRAGMA application_id").fetchone()[0], c.execute("PRAGMA user_version").fetchone()[0],
                [r[0] for r in c.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")])

    def _check_identity(self, app_id: int, version: int, tables: list[str]) -> None:
        if app_id not in (0, APPLICATION_ID):
            raise MemoryStoreError(f"{self.path}: a SQLite database of another application "
                                   f"(application_id {app_id:#x}), not a plasticity memory store")
        if version > SCHEMA_VERSION:
            raise MemoryStoreError(f"{self.path}: memory store schema version {version} is newer than "
                                   f"this plasticity knows ({SCHEMA_VERSION}); upgrade plasticity")
        if version == 0 and app_id == 0 and tables:
            raise MemoryStoreError(f"{self.path}: a SQLite database with other tables "
                                   f"({', '.join(sorted(tables)[:5])}), not a plasticity memory store")

    def _migrate(self) -> None:
        while True:
            # Up to date (the usual case): no write lock needed to open the store.
            if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            with self._tx() as c:
                # Re-read inside the write lock: another process may have migrated meanwhile.
                app_id, version, tables = self._identity(c)
                self._check_identity(app_id, version, tables)
                if version == SCHEMA_VERSION:
                    return
                try:
                    MIGRATIONS[version](c)
                except sqlite3.Error as e:
                    raise MemoryStoreError(f"{self.path}: migration to schema version {version + 1} "
                                           f"failed: {e}") from None
                c.execute(f"PRAGMA user_version = {version + 1}")
                if version == 0:
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, mode: str = "IMMEDIATE"):
        """A transaction; IMMEDIATE takes the write lock up front (waits up to busy_timeout).
        Nested use (inside another ``_tx`` of this store) becomes a savepoint."""
        with self._lock:
            c = self._conn
            if c.in_transaction:
                name = f"sp{self._depth}"
                self._depth += 1
                c.execute(f"SAVEPOINT {name}")
                try:
                    yield c
                except BaseException:
                    c.execute(f"ROLLBACK TO {name}")
                    c.execute(f"RELEASE {name}")
                    raise
                else:
                    c.execute(f"RELEASE {name}")
                finally:
                    self._depth -= 1
                return
            try:
                c.execute(f"BEGIN {mode}")
            except sqlite3.OperationalError as e:
                raise MemoryStoreError(f"{self.path}: database is busy or unavailable: {e}") from None
            try:
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                if c.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):  # corrupt file, disk full, lock timeout, ...
                    raise MemoryStoreError(f"{self.path}: database error: {e}") from e
                raise

    def _read(self):
        return self._tx("DEFERRED")

    # ---- notes ----
    _NOTE_SELECT = """SELECT n.id, n.text, n.importance, n.source, n.key, n.created_at, n.updated_at,
        (SELECT json_group_array(tag) FROM (SELECT tag FROM note_tags WHERE note_id = n.id ORDER BY tag))
        FROM notes n"""

    @staticmethod
    def _note(row) -> Note:
        return Note(id=row[0], text=row[1], importance=row[2], source=row[3], key=row[4],
                    created_at=row[5], updated_at=row[6], tags=tuple(json.loads(row[7])))

    def _get(self, c, note_id: int) -> Note | None:
        row = c.execute(self._NOTE_SELECT + " WHERE n.id = ?", (note_id,)).fetchone()
        return None if row is None else self._note(row)

    def _require(self, c, ref, what: str = "note") -> int:
        """A note id (int) or key (str) → the id of an existing note, else MemoryStoreError."""
        if isinstance(ref, str):
            row = c.execute("SELECT id FROM notes WHERE key = ?", (ref,)).fetchone()
            if row is None:
                raise MemoryStoreError(f"{what}: no note with key {ref[:80]!r}")
            return row[0]
        nid = _check_id(ref, f"{what} id")
        if c.execute("SELECT 1 FROM notes WHERE id = ?", (nid,)).fetchone() is None:
            raise MemoryStoreError(f"{what}: no note with id {nid}")
        return nid

    def _insert_note(self, c, text, tags, importance, source, key, created_at, where="") -> int:
        now = time.time()
        created = now if created_at is None else created_at
        if key is not None:
            row = c.execute("SELECT id FROM notes WHERE key = ?", (key,)).fetchone()
            if row is not None:
                raise _err(where, f"a note with key {key!r} already exists (note {row[0]})")
        cur = c.execute("INSERT INTO notes(key, text, importance, source, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (key, text, importance, source, created, now))
        nid = cur.lastrowid
        c.executemany("INSERT INTO note_tags(note_id, tag) VALUES (?, ?)", [(nid, t) for t in tags])
        return nid

    def add_note(self, text: str, tags: Iterable[str] = (), importance: float = DEFAULT_IMPORTANCE, *,
                 source: str = "manual", key: str | None = None, created_at: float | str | None = None) -> Note:
        """Store a note; returns it with its new id."""
        text = _check_text(text, self.max_text_chars)
        tags = _check_tags(tags)
        importance = _check_importance(importance)
        source = _check_source(source)
        key = _check_key(key)
        created = _check_time(created_at)
        with self._tx() as c:
            nid = self._insert_note(c, text, tags, importance, source, key, created)
            return self._get(c, nid)

    def get_note(self, ref: int | str) -> Note:
        """The note with this id (int) or key (str); MemoryStoreError if there is none."""
        with self._read() as c:
            return self._get(c, self._require(c, ref))

    def find_note(self, ref: int | str) -> Note | None:
        """Like :meth:`get_note` but None when missing."""
        try:
            return self.get_note(ref)
        except MemoryStoreError:
            return None

    def update_note(self, ref: int | str, *, text: str | None = None, tags: Iterable[str] | None = None,
                    importance: float | None = None) -> Note:
        """Change text, tags (replaced as a whole) and/or importance; bumps ``updated_at``."""
        text = None if text is None else _check_text(text, self.max_text_chars)
        tags = None if tags is None else _check_tags(tags)
        importance = None if importance is None else _check_importance(importance)
        with self._tx() as c:
            nid = self._require(c, ref)
            if text is not None:
                c.execute("UPDATE notes SET text = ? WHERE id = ?", (text, nid))
            if importance is not None:
                c.execute("UPDATE notes SET importance = ? WHERE id = ?", (importance, nid))
            if tags is not None:
                c.execute("DELETE FROM note_tags WHERE note_id = ?", (nid,))
                c.executemany("INSERT INTO note_tags(note_id, tag) VALUES (?, ?)", [(nid, t) for t in tags])
            c.execute("UPDATE notes SET updated_at = ? WHERE id = ?", (time.time(), nid))
            return self._get(c, nid)

    def delete_note(self, ref: int | str) -> None:
        """Delete a note, its tags and every link to or from it."""
        with self._tx() as c:
            nid = self._require(c, ref)
            c.execute("DELETE FROM notes WHERE id = ?", (nid,))

    def list_notes(self, tag: str | None = None, limit: int | None = 100, offset: int = 0,
                   order: str = "id", source: str | None = None) -> list[Note]:
        """Notes, optionally only those with ``tag`` / from ``source``. ``order``: one of
        ``id created updated importance``, ``-`` prefix for descending."""
        if order not in NOTE_ORDERS:
            raise MemoryStoreError(f"unknown order {order!r}; one of {', '.join(NOTE_ORDERS)}")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise MemoryStoreError(f"limit must be a non-negative integer, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise MemoryStoreError(f"offset must be a non-negative integer, got {offset!r}")
        where, args = [], []
        if tag is not None:
            _check_tags([tag])
            where.append("n.id IN (SELECT note_id FROM note_tags WHERE tag = ?)")
            args.append(tag)
        if source is not None:
            where.append("n.source = ?")
            args.append(source)
        sql = self._NOTE_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {NOTE_ORDERS[order]} LIMIT ? OFFSET ?"
        args += [-1 if limit is None else limit, offset]
        with self._read() as c:
            return [self._note(r) for r in c.execute(sql, args)]

    def count_notes(self) -> int:
        with self._read() as c:
            return c.execute("SELECT count(*) FROM notes").fetchone()[0]

    def tags(self) -> dict[str, int]:
        """Every tag with its number of notes."""
        with self._read() as c:
            return dict(c.execute("SELECT tag, count(*) FROM note_tags GROUP BY tag ORDER BY tag"))

    # ---- links ----
    def _insert_link(self, c, src: int, dst: int, type_: str, weight: float, where: str = "") -> int:
        if src == dst:
            raise _err(where, f"a note cannot link to itself (note {src})")
        if c.execute("SELECT 1 FROM links WHERE src = ? AND dst = ? AND type = ?",
                     (src, dst, type_)).fetchone():
            raise _err(where, f"link {src} -[{type_}]-> {dst} already exists")
        return c.execute("INSERT INTO links(src, dst, type, weight, created_at) VALUES (?, ?, ?, ?, ?)",
                         (src, dst, type_, weight, time.time())).lastrowid

    def add_link(self, src: int | str, dst: int | str, type: str = DEFAULT_LINK_TYPE,
                 weight: float = 1.0) -> Link:
        """Link two existing notes (ids, or keys as strings): ``src -[type]-> dst``."""
        type_ = _check_link_type(type)
        weight = _check_weight(weight)
        with self._tx() as c:
            s = self._require(c, src, "link source")
            d = self._require(c, dst, "link target")
            try:
                lid = self._insert_link(c, s, d, type_, weight)
            except sqlite3.IntegrityError as e:  # a concurrent writer got there first
                raise MemoryStoreError(f"cannot link {s} -> {d}: {e}") from None
            return Link(*c.execute("SELECT id, src, dst, type, weight, created_at FROM links WHERE id = ?",
                                   (lid,)).fetchone())

    def delete_link(self, link_id: int) -> None:
        with self._tx() as c:
            if c.execute("DELETE FROM links WHERE id = ?", (_check_id(link_id, "link id"),)).rowcount == 0:
                raise MemoryStoreError(f"no link with id {link_id}")

    def links_of(self, ref: int | str, direction: str = "both") -> list[Link]:
        """Links from (``out``), to (``in``) or both ways of a note, by id."""
        if direction not in ("both", "out", "in"):
            raise MemoryStoreError(f"direction must be both, out or in, got {direction!r}")
        cond = {"both": "src = :n OR dst = :n", "out": "src = :n", "in": "dst = :n"}[direction]
        with self._read() as c:
            nid = self._require(c, ref)
            return [Link(*r) for r in c.execute(
                f"SELECT id, src, dst, type, weight, created_at FROM links WHERE {cond} ORDER BY id", {"n": nid})]

    def neighbours(self, ref: int | str) -> list[Note]:
        """The distinct notes linked to or from a note, by id."""
        with self._read() as c:
            nid = self._require(c, ref)
            ids = [r[0] for r in c.execute(
                "SELECT dst FROM links WHERE src = :n UNION SELECT src FROM links WHERE dst = :n ORDER BY 1",
                {"n": nid})]
            return [self._get(c, i) for i in ids]

    def count_links(self) -> int:
        with self._read() as c:
            return c.execute("SELECT count(*) FROM links").fetchone()[0]

    # ---- random walk ----
    def _neighbour_weights(self, c, nid: int, exclude: set[int]) -> tuple[list[int], list[float]]:
        rows = c.execute(
            """SELECT other, sum(weight) * (n.importance + :eps) FROM (
                   SELECT dst AS other, weight FROM links WHERE src = :n
                   UNION ALL SELECT src AS other, weight FROM links WHERE dst = :n)
               JOIN notes n ON n.id = other GROUP BY other ORDER BY other""",
            {"eps": WALK_EPS, "n": nid}).fetchall()
        rows = [r for r in rows if r[0] not in exclude]
        return [r[0] for r in rows], [r[1] for r in rows]

    def walk(self, rng, length: int = 3, start: int | str | None = None) -> list[WalkStep]:
        """A random walk visiting ``length`` distinct notes (see :class:`WalkStep`).

        The start is ``start`` or a note drawn with probability ∝ importance + 0.05.
        Each step goes to an unvisited neighbour (links are walked both ways) with
        probability ∝ (sum of the link weights between the two) × (its importance
        + 0.05). With no unvisited neighbour it continues from the latest earlier note
        of the walk that has one (``backtrack``); if none has, it jumps to an unvisited
        note drawn by importance (``random``), so isolated notes still collide.
        ``rng`` needs only a ``random()`` method (``random.Random(seed)`` for a
        reproducible walk). Fewer than ``length`` notes in the store → MemoryStoreError.
        """
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_WALK:
            raise MemoryStoreError(f"walk length must be an integer in [1, {MAX_WALK}], got {length!r}")
        with self._read() as c:
            notes = c.execute("SELECT id, importance FROM notes ORDER BY id").fetchall()
            if len(notes) < length:
                raise MemoryStoreError(f"a walk of {length} notes needs at least {length} notes; "
                                       f"the store has {len(notes)}")
            if start is None:
                cur = _weighted_choice(rng, [n[0] for n in notes], [n[1] + WALK_EPS for n in notes])
            else:
                cur = self._require(c, start, "walk start")
            path, hows = [cur], ["start"]
            visited = {cur}
            while len(path) < length:
                ids, ws = self._neighbour_weights(c, cur, visited)
                how = "link"
                if not ids:
                    how = "backtrack"
                    for prev in reversed(path[:-1]):
                        ids, ws = self._neighbour_weights(c, prev, visited)
                        if ids:
                            break
                if not ids:
                    how = "random"
                    rest = [n for n in notes if n[0] not in visited]
                    ids, ws = [n[0] for n in rest], [n[1] + WALK_EPS for n in rest]
                cur = _weighted_choice(rng, ids, ws)
                path.append(cur)
                hows.append(how)
                visited.add(cur)
            return [WalkStep(self._get(c, n), h) for n, h in zip(path, hows)]

    def random_walk(self, rng, length: int = 3, start: int | str | None = None) -> list[Note]:
        """The ``length`` distinct "colliding" notes of :meth:`walk` (2-3 for a dream)."""
        return [s.note for s in self.walk(rng, length, start)]

    # ---- imports ----
    def import_path(self, path: str | os.PathLike) -> ImportResult:
        """A folder → :meth:`import_markdown_dir`, a file → :meth:`import_jsonl`."""
        p = Path(path)
        if p.is_dir():
            return self.import_markdown_dir(p)
        if not p.exists():
            raise MemoryStoreError(f"{p}: no such file or folder")
        return self.import_jsonl(p)

    def _validate_jsonl_record(self, obj, where: str) -> dict:
        if not isinstance(obj, dict):
            raise _err(where, f"expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - JSONL_FIELDS)
        if unknown:
            raise _err(where, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(sorted(JSONL_FIELDS))}")
        if "text" not in obj:
            raise _err(where, "missing field 'text'")
        rec = {
            "text": _check_text(obj["text"], self.max_text_chars, "text", where),
            "tags": _check_tags(obj.get("tags"), where),
            "importance": _check_importance(obj.get("importance"), where),
            "key": _check_key(obj["id"], where) if obj.get("id") is not None else None,
            "created_at": _check_time(obj.get("created_at"), where),
            "source": _check_source(obj.get("source", "import:jsonl"), where),
            "links": [],
        }
        links = obj.get("links")
        if links is not None:
            if not isinstance(links, list):
                raise _err(where, f"links must be a list, got {type(links).__name__}")
            for j, l in enumerate(links):
                lw = f"{where}: link {j}"
                if not isinstance(l, dict):
                    raise _err(lw, f"expected an object like {{\"to\": ..., \"type\": ...}}, got {type(l).__name__}")
                unknown = sorted(set(l) - JSONL_LINK_FIELDS)
                if unknown:
                    raise _err(lw, f"unknown field(s) {', '.join(map(repr, unknown))}")
                to = l.get("to")
                if isinstance(to, bool) or not isinstance(to, (str, int)) or (isinstance(to, str) and not to) \
                        or (isinstance(to, int) and to <= 0):
                    raise _err(lw, f"'to' must be a note id (positive integer) or key (string), got {to!r}")
                rec["links"].append((to, _check_link_type(l.get("type"), lw), _check_weight(l.get("weight"), lw)))
        return rec

    def import_jsonl(self, path: str | os.PathLike) -> ImportResult:
        """Import notes from JSONL, all or nothing.

        One object per line: ``{"text": str, "tags"?: [str], "importance"?: 0..1,
        "id"?: str|int, "links"?: [{"to": id-or-key, "type"?: str, "weight"?: >0}],
        "created_at"?: ISO-8601|unix seconds, "source"?: str}``. ``id`` is the note's key
        (stored as a string). A link's ``to`` names a note of the same file by its
        ``id``, else an existing note by key (string) or by store id (integer).
        The whole file is validated before anything is written; any error names the
        line and nothing is inserted.
        """
        p = Path(path)
        raw = _read_bytes(p, self.max_import_bytes)
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        recs: list[tuple[int, dict]] = []
        keys: dict[str, int] = {}
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            where = f"{p}: line {lineno}"
            if not line.strip():
                continue
            text = _decode(line, where)
            try:
                obj = json.loads(text, parse_constant=_reject_constant)
            except ValueError as e:
                raise _err(where, f"invalid JSON: {getattr(e, 'msg', str(e))}") from None
            except RecursionError:
                raise _err(where, "invalid JSON: nested too deeply") from None
            rec = self._validate_jsonl_record(obj, where)
            if rec["key"] is not None:
                if rec["key"] in keys:
                    raise _err(where, f"duplicate id {rec['key']!r} (first on line {keys[rec['key']]})")
                keys[rec["key"]] = lineno
            recs.append((lineno, rec))
        if not recs:
            raise MemoryStoreError(f"{p}: no notes in the file")
        with self._tx() as c:
            ids: dict[str, int] = {}
            new: list[int] = []
            for lineno, rec in recs:
                nid = self._insert_note(c, rec["text"], rec["tags"], rec["importance"], rec["source"],
                                        rec["key"], rec["created_at"], f"{p}: line {lineno}")
                new.append(nid)
                if rec["key"] is not None:
                    ids[rec["key"]] = nid
            nlinks = 0
            for (lineno, rec), src in zip(recs, new):
                for j, (to, type_, weight) in enumerate(rec["links"]):
                    where = f"{p}: line {lineno}: link {j}"
                    if str(to) in ids:
                        dst = ids[str(to)]
                    else:
                        try:
                            dst = self._require(c, to, "link target")
                        except MemoryStoreError as e:
                            raise _err(where, f"{e} (not in this file either)") from None
                    self._insert_link(c, src, dst, type_, weight, where)
                    nlinks += 1
            return ImportResult(tuple(new), nlinks)

    def import_markdown_dir(self, path: str | os.PathLike) -> ImportResult:
        """Import a folder of Markdown notes (``*.md``, recursively, hidden folders skipped), all or nothing.

        One note per file; the file name without ``.md`` is the note's key. Optional
        front matter between ``---`` lines: ``tags: [a, b]`` (or ``a, b``, or a ``- a``
        list) and ``importance: 0.7``; other keys are ignored. ``[[name]]``,
        ``[[name|alias]]`` and ``[[name#heading]]`` become ``mentions`` links to the note
        of that file (or an existing note with that key); a link to a note that exists
        nowhere is an error. Self-mentions and repeated mentions are ignored.
        """
        root = Path(path)
        if not root.is_dir():
            raise MemoryStoreError(f"{root}: not a folder")
        files = sorted(f for f in root.rglob("*.md")
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
        if not files:
            raise MemoryStoreError(f"{root}: no .md files")
        stems: dict[str, Path] = {}
        parsed = []
        total = 0
        for f in files:
            key = _check_key(f.stem, str(f))
            if key in stems:
                raise MemoryStoreError(f"{f}: note name {key!r} also used by {stems[key]}")
            stems[key] = f
            raw = _read_bytes(f, self.max_import_bytes)
            total += len(raw)
            if total > self.max_import_bytes:
                raise MemoryStoreError(f"{root}: more than the import limit of {self.max_import_bytes} bytes")
            text = _decode(raw, str(f)).replace("\r\n", "\n")
            meta, body = _parse_front_matter(text, str(f))
            body = body.strip()
            parsed.append((f, key, {
                "text": _check_text(body, self.max_text_chars, "note text", str(f)),
                "tags": _check_tags(meta.get("tags"), str(f)),
                "importance": _check_importance(meta.get("importance"), str(f)),
                "targets": [m.group(1).strip() for m in WIKI_RE.finditer(body)],
            }))
        folded: dict[str, list[str]] = {}
        for k in stems:
            folded.setdefault(k.casefold(), []).append(k)
        with self._tx() as c:
            ids: dict[str, int] = {}
            for f, key, rec in parsed:
                ids[key] = self._insert_note(c, rec["text"], rec["tags"], rec["importance"],
                                             "import:markdown", key, None, str(f))
            nlinks = 0
            for f, key, rec in parsed:
                seen: set[int] = set()
                for t in rec["targets"]:
                    if t in ids:
                        dst = ids[t]
                    elif len(folded.get(t.casefold(), [])) == 1:
                        dst = ids[folded[t.casefold()][0]]
                    else:
                        row = c.execute("SELECT id FROM notes WHERE key = ?", (t,)).fetchone()
                        if row is None:
                            raise MemoryStoreError(f"{f}: [[{t[:80]}]] links to a missing note "
                                                   "(no such file and no note with that key)")
                        dst = row[0]
                    if dst == ids[key] or dst in seen:
                        continue
                    seen.add(dst)
                    self._insert_link(c, ids[key], dst, MARKDOWN_LINK_TYPE, 1.0, str(f))
                    nlinks += 1
            return ImportResult(tuple(ids[k] for _, k, _ in parsed), nlinks)

    # ---- conversation capture (the fast stage) ----
    def capture_conversation(self, messages, response: str, tags: Iterable[str] = ("conversation",),
                             importance: float = 0.3) -> Note:
        """Store one served conversation as a note (``source = 'conversation'``).

        ``messages``: a prompt string or OpenAI-style chat messages
        (``{"role": str, "content": str | [{"type": "text", "text": str}, ...]}``);
        ``response``: the model's answer. The note text is ``role: content`` lines
        ending with ``assistant: response``. Opt-in: the server calls this only when
        capture is configured, and must treat MemoryStoreError as "not captured".
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list) or not messages:
            raise MemoryStoreError("messages must be a prompt string or a non-empty list of chat messages")
        lines = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
                raise MemoryStoreError(f"message {i}: expected {{\"role\": str, \"content\": str}}")
            content = m.get("content")
            if isinstance(content, list):
                parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                if not all(isinstance(p, str) for p in parts):
                    raise MemoryStoreError(f"message {i}: text parts must be strings")
                content = "\n".join(parts)
            if not isinstance(content, str):
                raise MemoryStoreError(f"message {i}: content must be a string or a list of text parts")
            if content.strip():
                lines.append(f"{m['role']}: {content}")
        if not isinstance(response, str) or not response.strip():
            raise MemoryStoreError("response must be a non-empty string")
        lines.append(f"assistant: {response}")
        return self.add_note("\n".join(lines), tags, importance, source="conversation")

    # ---- dream cycles, candidates, the train queue ----
    def start_cycle(self, config: dict | None = None) -> int:
        """Open a dream cycle (status ``running``); returns its id."""
        try:
            cfg = None if config is None else json.dumps(config, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise MemoryStoreError(f"cycle config must be plain JSON: {e}") from None
        with self._tx() as c:
            return c.execute("INSERT INTO cycles(started_at, status, config) VALUES (?, 'running', ?)",
                             (time.time(), cfg)).lastrowid

    def finish_cycle(self, cycle_id: int, status: str = "done") -> None:
        if status not in ("done", "failed"):
            raise MemoryStoreError(f"cycle status must be done or failed, got {status!r}")
        with self._tx() as c:
            n = c.execute("UPDATE cycles SET status = ?, finished_at = ? WHERE id = ? AND status = 'running'",
                          (status, time.time(), _check_id(cycle_id, "cycle id"))).rowcount
            if n == 0:
                raise MemoryStoreError(f"no running cycle with id {cycle_id}")

    def cycles(self, limit: int | None = None) -> list[dict]:
        with self._read() as c:
            rows = c.execute("SELECT id, started_at, finished_at, status, config FROM cycles ORDER BY id DESC "
                             "LIMIT ?", (-1 if limit is None else limit,)).fetchall()
        return [{"id": r[0], "started_at": r[1], "finished_at": r[2], "status": r[3],
                 "config": None if r[4] is None else json.loads(r[4])} for r in rows]

    def journal_id(self, candidate_id: int) -> str:
        """The training-journal id of an accepted candidate (fixed, unique across stores)."""
        return f"mem-{self.store_id[:16]}-{candidate_id}"

    def add_candidate(self, cycle_id: int, memory_ids: Sequence[int], scenario: str, response: str,
                      score: float | None, accepted: bool, reason: str = "", *,
                      context: str | list | None = None, decision: str | None = None) -> Candidate:
        """Record one generated candidate; if ``accepted``, queue it for training in the same
        transaction. ``context``/``decision`` (the training example) default to
        ``scenario``/``response``; ``context`` may be a list of chat messages."""
        cycle_id = _check_id(cycle_id, "cycle id")
        if not isinstance(memory_ids, (list, tuple)) or not memory_ids:
            raise MemoryStoreError("memory_ids must be a non-empty list of note ids")
        mids = tuple(_check_id(m, "memory id") for m in memory_ids)
        scenario = _check_text(scenario, self.max_text_chars, "scenario")
        response = _check_text(response, self.max_text_chars, "response")
        if score is not None:
            if not _is_number(score) or not math.isfinite(score):
                raise MemoryStoreError(f"score must be a finite number or None, got {score!r}")
            score = float(score)
        if not isinstance(accepted, bool):
            raise MemoryStoreError(f"accepted must be a bool, got {type(accepted).__name__}")
        if not isinstance(reason, str) or len(reason) > self.max_text_chars:
            raise MemoryStoreError("reason must be a string within max_text_chars")
        ctx = scenario if context is None else context
        if isinstance(ctx, str):
            _check_text(ctx, self.max_text_chars, "context")
        elif not (isinstance(ctx, list) and ctx and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in ctx)):
            raise MemoryStoreError("context must be a string or a non-empty list of {role, content} messages")
        dec = _check_text(response if decision is None else decision, self.max_text_chars, "decision")
        now = time.time()
        with self._tx() as c:
            if c.execute("SELECT status FROM cycles WHERE id = ?", (cycle_id,)).fetchone() is None:
                raise MemoryStoreError(f"no cycle with id {cycle_id}")
            cid = c.execute("INSERT INTO candidates(cycle_id, memory_ids, scenario, response, score, accepted, "
                            "reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (cycle_id, json.dumps(list(mids)), scenario, response, score, int(accepted),
                             reason, now)).lastrowid
            if accepted:
                c.execute("INSERT INTO train_queue(candidate_id, journal_id, context, decision, state, updated_at) "
                          "VALUES (?, ?, ?, ?, 'queued', ?)",
                          (cid, self.journal_id(cid), json.dumps(ctx, ensure_ascii=False), dec, now))
            return self._candidates(c, "WHERE c.id = ?", (cid,))[0]

    _CAND_SELECT = """SELECT c.id, c.cycle_id, c.memory_ids, c.scenario, c.response, c.score, c.accepted,
        c.reason, c.created_at, q.state FROM candidates c LEFT JOIN train_queue q ON q.candidate_id = c.id """

    def _candidates(self, c, where: str, args) -> list[Candidate]:
        return [Candidate(id=r[0], cycle_id=r[1], memory_ids=tuple(json.loads(r[2])), scenario=r[3],
                          response=r[4], score=r[5], accepted=bool(r[6]), reason=r[7], created_at=r[8],
                          queue_state=r[9])
                for r in c.execute(self._CAND_SELECT + where + " ORDER BY c.id", args)]

    def candidates(self, cycle_id: int | None = None, accepted: bool | None = None) -> list[Candidate]:
        """Every candidate (optionally of one cycle / only accepted or rejected), with score and reason."""
        where, args = [], []
        if cycle_id is not None:
            where.append("c.cycle_id = ?")
            args.append(cycle_id)
        if accepted is not None:
            where.append("c.accepted = ?")
            args.append(int(bool(accepted)))
        with self._read() as c:
            return self._candidates(c, ("WHERE " + " AND ".join(where)) if where else "", args)

    def queue(self, state: str = "queued", limit: int | None = None) -> list[QueueItem]:
        """Train-queue rows in ``state``, oldest first."""
        if state not in QUEUE_STATES:
            raise MemoryStoreError(f"queue state must be one of {', '.join(QUEUE_STATES)}, got {state!r}")
        with self._read() as c:
            rows = c.execute("SELECT id, candidate_id, journal_id, context, decision, state, updated_at "
                             "FROM train_queue WHERE state = ? ORDER BY id LIMIT ?",
                             (state, -1 if limit is None else limit)).fetchall()
        return [QueueItem(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def _advance(self, column: str, values: Iterable, to: str, frm: tuple[str, ...]) -> int:
        vals = list(values)
        with self._tx() as c:
            n = 0
            for v in vals:
                n += c.execute(f"UPDATE train_queue SET state = ?, updated_at = ? WHERE {column} = ? "
                               f"AND state IN ({', '.join('?' * len(frm))})",
                               (to, time.time(), v, *frm)).rowcount
            return n

    def mark_journaled(self, queue_ids: Iterable[int]) -> int:
        """``queued -> journaled`` for these queue rows (after their journal append is durable).
        Rows already further along are left alone; returns how many moved."""
        return self._advance("id", queue_ids, "journaled", ("queued",))

    def mark_trained(self, journal_ids: Iterable[str]) -> int:
        """``queued|journaled -> trained`` for these journal ids (reported trained by the trainer)."""
        return self._advance("journal_id", journal_ids, "trained", ("queued", "journaled"))

    def reconcile_queue(self, journaled_ids: Iterable[str] = (), trained_ids: Iterable[str] = ()) -> dict:
        """After a restart: ids found in the training journal → ``journaled``; ids in the
        trainer's done journal → ``trained``. Returns the number of rows moved."""
        with self._tx():
            j = self._advance("journal_id", journaled_ids, "journaled", ("queued",))
            t = self.mark_trained(trained_ids)
        return {"journaled": j, "trained": t}

    def queue_counts(self) -> dict[str, int]:
        with self._read() as c:
            got = dict(c.execute("SELECT state, count(*) FROM train_queue GROUP BY state"))
        return {s: got.get(s, 0) for s in QUEUE_STATES}

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]
