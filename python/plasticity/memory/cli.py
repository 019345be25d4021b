"""``plasticity memory``: the dream loop's memory store from the command line.

    plasticity memory [--db FILE] add TEXT [--tag T ...] [--importance X] [--key K]
    plasticity memory [--db FILE] link SRC DST [--type T] [--weight W]
    plasticity memory [--db FILE] list [--tag T] [--limit N] [--offset N] [--order O] [--json]
    plasticity memory [--db FILE] show ID [--json]
    plasticity memory [--db FILE] import FILE_OR_DIR
    plasticity memory [--db FILE] walk [--length N] [--seed S] [--start ID] [--json]

The database is ``--db``, else ``$PLASTICITY_MEMORY_DB``, else
``./plasticity-memory.sqlite``. A note reference (SRC, DST, ID) that is all digits
is a note id, anything else a note key. Errors go to stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime

DEFAULT_DB = "plasticity-memory.sqlite"
ENV_DB = "PLASTICITY_MEMORY_DB"


def default_db() -> str:
    return os.environ.get(ENV_DB) or os.path.join(".", DEFAULT_DB)


def add_parser(sub) -> None:
    mem = sub.add_parser("memory", help="the dream loop's memory store (notes and links in SQLite)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    db_help = f"memory store file (default: ${ENV_DB} or ./{DEFAULT_DB})"
    mem.add_argument("--db", default=None, help=db_help)
    # --db is also accepted after the subcommand; SUPPRESS keeps an absent one from overriding.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    msub = mem.add_subparsers(dest="memory_cmd", required=True)

    p = msub.add_parser("add", parents=[common], help="add a note")
    p.add_argument("text")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    p.add_argument("--importance", type=float, default=None, help="0..1 (default 0.5)")
    p.add_argument("--key", default=None, help="a unique name for the note")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_add)

    p = msub.add_parser("link", parents=[common], help="link two notes: SRC -[type]-> DST")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--type", default="related")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_link)

    p = msub.add_parser("list", parents=[common], help="list notes")
    p.add_argument("--tag", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--order", default="id", help="id, created, updated, importance; '-' prefix: descending")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run_list)

    p = msub.add_parser("show", parents=[common], help="a note with its links")
    p.add_argument("ref", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_show)

    p = msub.add_parser("import", parents=[common], help="import a JSONL file or a folder of Markdown notes")
    p.add_argument("path", metavar="FILE_OR_DIR")
    p.set_defaults(func=run_import)

    p = msub.add_parser("walk", parents=[common], help="a random walk: the colliding notes of one dream")
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--start", default=None, metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_walk)


def _ref(s: str | None):
    if s is None:
        return None
    return int(s) if s.isdigit() else s


def _fail(msg: str) -> int:
    print(f"plasticity memory: {msg}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, body, create: bool = False) -> int:
    import sqlite3

    from .store import MemoryStore, MemoryStoreError

    path = args.db or default_db()
    existed = os.path.exists(path)
    try:
        with MemoryStore(path, create=create) as store:
            return body(store)
    except MemoryStoreError as e:
        msg = str(e)
    except sqlite3.Error as e:
        msg = f"{path}: database error: {e}"
    if create and not existed:  # a failed first add/import leaves no empty store behind
        for p in (path, path + "-wal", path + "-shm"):
            try:
                os.remove(p)
            except OSError:
                pass
    return _fail(msg)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _line(n) -> str:
    text = " ".join(n.text.split())
    text = text if len(text) <= 70 else text[:67] + "..."
    tags = ",".join(n.tags)
    key = f" [{n.key}]" if n.key else ""
    return f"{n.id:>5}  {n.importance:4.2f}  {tags:<24} {text}{key}"


def run_add(args: argparse.Namespace) -> int:
    def body(store):
        n = store.add_note(args.text, args.tag, args.importance, source="cli", key=args.key)
        print(json.dumps(n.to_dict(), ensure_ascii=False) if args.json else f"added note {n.id}")
        return 0

    return _run(args, body, create=True)


def run_link(args: argparse.Namespace) -> int:
    def body(store):
        l = store.add_link(_ref(args.src), _ref(args.dst), args.type, args.weight)
        print(json.dumps(l.to_dict()) if args.json
              else f"linked {l.src} -[{l.type}]-> {l.dst} (link {l.id}, weight {l.weight:g})")
        return 0

    return _run(args, body)


def run_list(args: argparse.Namespace) -> int:
    def body(store):
        notes = store.list_notes(tag=args.tag, limit=args.limit, offset=args.offset, order=args.order)
        if args.json:
            for n in notes:
                print(json.dumps(n.to_dict(), ensure_ascii=False))
        else:
            for n in notes:
                print(_line(n))
            total = store.count_notes()
            print(f"({len(notes)} shown, {total} notes in {store.path})")
        return 0

    return _run(args, body)


def run_show(args: argparse.Namespace) -> int:
    def body(store):
        n = store.get_note(_ref(args.ref))
        links = store.links_of(n.id)
        if args.json:
            print(json.dumps({"note": n.to_dict(), "links": [l.to_dict() for l in links]}, ensure_ascii=False))
            return 0
        print(f"note {n.id}" + (f" [{n.key}]" if n.key else ""))
        print(f"  importance {n.importance:g}, tags {', '.join(n.tags) or '-'}, source {n.source}")
        print(f"  created {_when(n.created_at)}, updated {_when(n.updated_at)}")
        print()
        print("  " + n.text.replace("\n", "\n  "))
        if links:
            print()
        for l in links:
            other = store.get_note(l.dst if l.src == n.id else l.src)
            arrow = f"-[{l.type}]->" if l.src == n.id else f"<-[{l.type}]-"
            label = other.key or " ".join(other.text.split())[:50]
            print(f"  {arrow} {other.id} {label} (weight {l.weight:g})")
        return 0

    return _run(args, body)


def run_import(args: argparse.Namespace) -> int:
    def body(store):
        r = store.import_path(args.path)
        print(f"imported {len(r.note_ids)} notes and {r.links} links from {args.path}")
        return 0

    return _run(args, body, create=True)


def run_walk(args: argparse.Namespace) -> int:
    import random

    def body(store):
        steps = store.walk(random.Random(args.seed), args.length, _ref(args.start))
        for s in steps:
            if args.json:
                print(json.dumps({"how": s.how, **s.note.to_dict()}, ensure_ascii=False))
            else:
                print(f"{s.how:>9} {_line(s.note)}")
        return 0

    return _run(args, body)
