"""The memory store of the dream loop: one SQLite file.

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
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

APPLICATION_ID = 0x504C4D53  # "PLMS": a plasticity memory store
SQLITE_MAGIC = b"SQLite format 3\x00"

DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_IMPORT_BYTES = 64 << 20
DEFAULT_IMPORTANCE = 0.5
DEFAULT_LINK_TYPE = "related"
MARKDOWN_LINK_TYPE = "mentions"
MAX_TAGS = 32
MAX_KEY_CHARS = 200
MAX_WEIGHT = 1e6
MAX_WALK = 64
WALK_EPS = 0.05  # added to importance so a note of importance 0 can still be reached

TAG_RE = re.compile(r"[\w.:/+\-]{1,64}")
LINK_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,31}")
SOURCE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,63}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
WIKI_RE = re.compile(r"\[\[([^\[\]|#\n]+)(?:#[^\[\]|\n]*)?(?:\|[^\[\]\n]*)?\]\]")
QUEUE_STATES = ("queued", "journaled", "trained")
CYCLE_STATES = ("running", "done", "failed")
NOTE_ORDERS = {
    "id": "n.id ASC", "-id": "n.id DESC",
    "created": "n.created_at ASC, n.id ASC", "-created": "n.created_at DESC, n.id DESC",
    "updated": "n.updated_at ASC, n.id ASC", "-updated": "n.updated_at DESC, n.id DESC",
    "importance": "n.importance ASC, n.id ASC", "-importance": "n.importance DESC, n.id ASC",
}
JSONL_FIELDS = {"text", "tags", "importance", "id", "links", "created_at", "source"}
JSONL_LINK_FIELDS = {"to", "type", "weight"}


class MemoryStoreError(ValueError):
    """Input or a file the memory store refuses; the message says what and where. Nothing was changed."""


def sample_graph_path() -> Path:
    """The small memory graph shipped with plasticity (Python-language topics, JSONL)."""
    return Path(__file__).with_name("data") / "sample_graph.jsonl"


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Note:
    id: int
    text: str
    tags: tuple[str, ...]
    importance: float
    source: str
    key: str | None
    created_at: float
    updated_at: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d


@dataclass(frozen=True)
class Link:
    id: int
    src: int
    dst: int
    type: str
    weight: float
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WalkStep:
    """One note of a random walk and how it was reached: ``start``, ``link``
    (a neighbour of the previous note), ``backtrack`` (a neighbour of an earlier
    note of the walk) or ``random`` (no unvisited neighbour anywhere on the walk)."""

    note: Note
    how: str


@dataclass(frozen=True)
class ImportResult:
    note_ids: tuple[int, ...]
    links: int


@dataclass(frozen=True)
class Candidate:
    id: int
    cycle_id: int
    memory_ids: tuple[int, ...]
    scenario: str
    response: str
    score: float | None
    accepted: bool
    reason: str
    created_at: float
    queue_state: str | None  # None when not accepted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_ids"] = list(self.memory_ids)
        return d


@dataclass(frozen=True)
class QueueItem:
    id: int
    candidate_id: int
    journal_id: str
    context: Any  # a string or a list of chat messages
    decision: str
    state: str
    updated_at: float


# --------------------------------------------------------------------------- migrations

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


# --------------------------------------------------------------------------- validation

def _err(prefix: str, msg: str) -> MemoryStoreError:
    return MemoryStoreError(f"{prefix}: {msg}" if prefix else msg)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_text(text, max_chars: int, what: str = "text", where: str = "") -> str:
    if not isinstance(text, str):
        raise _err(where, f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _err(where, f"{what} is empty")
    if len(text) > max_chars:
        raise _err(where, f"{what} has {len(text)} characters, more than the maximum of {max_chars}")
    if "\x00" in text:
        raise _err(where, f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _err(where, f"{what} is not valid Unicode (lone surrogate at position {e.start})") from None
    return text


def _check_tags(tags, where: str = "") -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise _err(where, f"tags must be a list of strings, got {type(tags).__name__}")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str):
            raise _err(where, f"tag must be a string, got {type(t).__name__}")
        if not TAG_RE.fullmatch(t):
            raise _err(where, f"invalid tag {t[:80]!r}: 1-64 letters, digits or . : / + - _")
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise _err(where, f"{len(out)} tags, more than the maximum of {MAX_TAGS}")
    return tuple(sorted(out))


def _check_importance(x, where: str = "") -> float:
    if x is None:
        return DEFAULT_IMPORTANCE
    if not _is_number(x):
        raise _err(where, f"importance must be a number in [0, 1], got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise _err(where, f"importance must be a number in [0, 1], got {x!r}")
    return x


def _check_weight(x, where: str = "") -> float:
    if x is None:
        return 1.0
    if not _is_number(x):
        raise _err(where, f"link weight must be a positive number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or not 0.0 < x <= MAX_WEIGHT:
        raise _err(where, f"link weight must be a number in (0, {MAX_WEIGHT:g}], got {x!r}")
    return x


def _check_link_type(t, where: str = "") -> str:
    if t is None:
        return DEFAULT_LINK_TYPE
    if not isinstance(t, str) or not LINK_TYPE_RE.fullmatch(t):
        raise _err(where, f"invalid link type {t!r}: a letter then up to 31 letters, digits, _ or -")
    return t


def _check_key(k, where: str = "") -> str | None:
    if k is None:
        return None
    if _is_number(k) and isinstance(k, int):
        k = str(k)
    if not isinstance(k, str):
        raise _err(where, f"note key must be a string or an integer, got {type(k).__name__}")
    if not k or k != k.strip() or len(k) > MAX_KEY_CHARS or CONTROL_RE.search(k) or "\n" in k or "\r" in k \
            or "\t" in k:
        raise _err(where, f"invalid note key {k[:80]!r}: 1-{MAX_KEY_CHARS} characters, no control "
                          "characters or surrounding spaces")
    try:
        k.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(where, "note key is not valid Unicode") from None
    return k


def _check_source(s, where: str = "") -> str:
    if not isinstance(s, str) or not SOURCE_RE.fullmatch(s):
        raise _err(where, f"invalid source {s!r}")
    return s


def _check_id(x, what: str = "note id") -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x <= 0:
        raise MemoryStoreError(f"{what} must be a positive integer, got {x!r}")
    return x


def _check_time(x, where: str = "") -> float | None:
    if x is None:
        return None
    if _is_number(x):
        v = float(x)
    elif isinstance(x, str):
        try:
            v = datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise _err(where, f"created_at {x[:80]!r} is not an ISO 8601 time") from None
    else:
        raise _err(where, f"created_at must be an ISO 8601 string or unix seconds, got {type(x).__name__}")
    if not math.isfinite(v) or v < 0:
        raise _err(where, f"created_at {x!r} is out of range")
    return v


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _read_bytes(path, limit: int) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise MemoryStoreError(f"{p}: {size} bytes, more than the import limit of {limit}")
        return p.read_bytes()
    except MemoryStoreError:
        raise
    except IsADirectoryError:
        raise MemoryStoreError(f"{p}: is a directory") from None
    except OSError as e:
        raise MemoryStoreError(f"{p}: cannot read: {e.strerror or e}") from None


def _decode(raw: bytes, where: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MemoryStoreError(f"{where}: not valid UTF-8 (byte {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _weighted_choice(rng, items: Sequence, weights: Sequence[float]):
    total = math.fsum(weights)
    r = rng.random() * total
    acc = 0.0
    for item, w in zip(items, weights):
        acc += w
        if r < acc:
            return item
    return items[-1]


# --------------------------------------------------------------------------- markdown

def _parse_front_matter(text: str, where: str) -> tuple[dict, str]:
    """``---``-fenced ``key: value`` lines at the top; ``tags`` may be ``[a, b]``,
    ``a, b`` or a following ``- a`` list. Unknown keys are ignored."""
    if not (text.startswith("---\n") or text == "---"):
        return {}, text
    lines = text.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip() == "---"), None)
    if end is None:
        raise MemoryStoreError(f"{where}: front matter opened with '---' is never closed")
    meta: dict[str, Any] = {}
    current_list: list | None = None
    for n, line in enumerate(lines[1:end], start=2):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("- ") and current_list is not None:
            current_list.append(s[2:].strip().strip("'\""))
            continue
        m = re.fullmatch(r"([A-Za-z_][\w-]*)\s*:\s*(.*)", s)
        if not m:
            raise MemoryStoreError(f"{where}: front matter line {n}: expected 'key: value', got {s[:80]!r}")
        k, v = m.group(1).lower(), m.group(2).strip()
        current_list = None
        if k == "tags":
            if not v:
                current_list = meta["tags"] = []
            else:
                v = v[1:-1] if v.startswith("[") and v.endswith("]") else v
                meta["tags"] = [t.strip().strip("'\"") for t in v.split(",") if t.strip()]
        elif k == "importance":
            try:
                meta["importance"] = float(v.strip("'\""))
            except ValueError:
                raise MemoryStoreError(f"{where}: front matter line {n}: importance {v[:40]!r} "
                                       "is not a number") from None
    if "tags" in meta:
        meta["tags"] = [t[1:] if t.startswith("#") else t for t in meta["tags"]]
    return meta, "\n".join(lines[end + 1:])


# --------------------------------------------------------------------------- the store

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
