"""The dream loop's status, read from the SQLite store (read-only; any process).

``status_dict(db)``: cycles run (by status), candidates generated, accepted, rejected by
reason, accept rate, the train queue by state, and the diversity of the accepted set
(distinct-1/2/3 and the embedding spread of hashed n-gram vectors, over the most recent
``max_texts`` accepted). A live :class:`~plasticity.dream.runner.DreamRunner` adds its
own state under ``"runner"``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from . import metrics
from .novelty import HashEmbedder


def _reason_key(reason: str) -> str:
    # candidates store "reason; score ...; detail": the reason is the part before the first ';'
    return (reason or "").split(";", 1)[0].strip() or "unknown"


def status_dict(db, runner=None, *, max_texts: int = 2000) -> dict:
    p = Path(db)
    out: dict = {"db": str(p)}
    if not p.is_file():
        out.update(exists=False, error="no memory store at this path")
        return out
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        out.update(exists=True, error=f"cannot open: {e}")
        return out
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"cycles", "candidates", "train_queue", "notes"} <= tables:
            out.update(exists=True, error="not a dream-capable memory store (schema version < 2)")
            return out
        cyc = dict(conn.execute("SELECT status, count(*) FROM cycles GROUP BY status").fetchall())
        notes = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        gen = conn.execute("SELECT count(*) FROM candidates").fetchone()[0]
        acc = conn.execute("SELECT count(*) FROM candidates WHERE accepted = 1").fetchone()[0]
        by_reason: dict[str, int] = {}
        for reason, n in conn.execute("SELECT reason, count(*) FROM candidates WHERE accepted = 0 GROUP BY reason"):
            k = _reason_key(reason)
            by_reason[k] = by_reason.get(k, 0) + n
        queue = dict(conn.execute("SELECT state, count(*) FROM train_queue GROUP BY state").fetchall())
        last = conn.execute("SELECT max(started_at) FROM cycles").fetchone()[0]
        rows = conn.execute("SELECT scenario, response FROM candidates WHERE accepted = 1 ORDER BY id DESC LIMIT ?",
                            (max_texts,)).fetchall()
    except sqlite3.Error as e:
        out.update(exists=True, error=f"cannot read: {e}")
        return out
    finally:
        conn.close()
    texts = [f"{s}\n{r}" for s, r in rows]
    div = metrics.diversity(texts)
    div["embedding_spread_hash"] = metrics.embedding_spread(HashEmbedder().embed(texts)) if len(texts) > 1 else 0.0
    div["over_last"] = len(texts)
    out.update({
        "exists": True, "notes": notes,
        "cycles": {"total": sum(cyc.values()), "done": cyc.get("done", 0), "failed": cyc.get("failed", 0),
                   "running": cyc.get("running", 0)},
        "generated": gen, "accepted": acc, "rejected": gen - acc,
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "accept_rate": (acc / gen) if gen else None,
        "queue": {s: queue.get(s, 0) for s in ("queued", "journaled", "trained")},
        "diversity": div,
        "last_cycle_started_at": last,
    })
    if runner is not None:
        out["runner"] = runner.status()
    return out
