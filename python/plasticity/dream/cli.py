"""``plasticity dream``: run the dream loop against a plasticity server, inspect it, compare it.

    plasticity dream [--config F] [--server URL] [--db FILE] --cycles N [options]   # N cycles by hand
    plasticity dream [--config F] [--server URL] [--db FILE]                        # run per [dream] schedule until stopped
    plasticity dream status [--db FILE | --server URL] [--json]
    plasticity dream candidates [--db FILE] [--accepted | --rejected] [--cycle ID] [--limit N] [--json]
    plasticity dream compare --cycles K [--server URL] [--db FILE] [--out FILE]    # loop vs naive sampling

The config is ``--config``, else ``$PLASTICITY_CONFIG`` (its ``[dream]`` and ``[training]``
sections). The store is ``--db``, else ``[dream] db``, else ``$PLASTICITY_MEMORY_DB``,
else ``./plasticity-memory.sqlite``. The server is ``--server``, else ``$PLASTICITY_SERVER``,
else ``http://127.0.0.1:8000``; its API key ``--api-key``, else ``$PLASTICITY_API_KEY``, else
``$VLLM_API_KEY``. Errors go to stderr as ``plasticity dream: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _common(p, server=True):
    p.add_argument("--config", default=argparse.SUPPRESS, help="plasticity.toml (default: $PLASTICITY_CONFIG)")
    p.add_argument("--db", default=argparse.SUPPRESS, help="memory store file")
    if server:
        p.add_argument("--server", default=argparse.SUPPRESS, help=f"server URL (default: $PLASTICITY_SERVER or {DEFAULT_SERVER})")
        p.add_argument("--api-key", default=argparse.SUPPRESS, help="server API key (default: $PLASTICITY_API_KEY or $VLLM_API_KEY)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")


def _loop_options(p):
    p.add_argument("--cycles", type=int, default=None, help="run N cycles, submit, and exit (default: run per schedule)")
    p.add_argument("--import", dest="import_path", default=None, metavar="FILE_OR_DIR",
                   help="import memories (JSONL file or Markdown folder) into the store first, all or nothing")
    p.add_argument("--judge", default=None, help="rubric, rule, endpoint, or a comma list (all must pass)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--walk-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cycles-per-hour", type=float, default=None, help="rate bound")
    p.add_argument("--accept-threshold", type=float, default=None)
    p.add_argument("--novelty-threshold", type=float, default=None)
    p.add_argument("--embedding", default=None, help="server or hash")
    p.add_argument("--response-prefix", default=None)
    p.add_argument("--tokenizer", default=None, help="ignored, kept so older scripts still run: the server now matches the loop's examples by id")
    p.add_argument("--no-submit", action="store_true", help="store candidates, do not send them to the server")
    p.add_argument("--wait-trained", type=float, default=0.0, metavar="S",
                   help="after the cycles, wait up to S seconds until the trainer reports them trained")


def add_parser(sub) -> None:
    d = sub.add_parser("dream", help="the dream loop: memories -> scenarios -> judge -> training",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(d)
    _loop_options(d)
    d.set_defaults(func=run_loop, dream_cmd=None)
    dsub = d.add_subparsers(dest="dream_cmd")
    p = dsub.add_parser("status", help="cycles, accepted, rejected by reason, diversity, queue")
    _common(p)
    p.set_defaults(func=run_status)
    p = dsub.add_parser("candidates", help="every candidate with its score and reason")
    _common(p, server=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--accepted", action="store_true")
    g.add_argument("--rejected", action="store_true")
    p.add_argument("--cycle", type=int, default=None)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=run_candidates)
    p = dsub.add_parser("compare", help="the loop vs naive sampling from the same memories, same budget")
    _common(p)
    _loop_options(p)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.set_defaults(func=run_compare)


# ---------------------------------------------------------------- helpers

class CliError(Exception):
    pass


def _get(args, name, default=None):
    return getattr(args, name, default)


def _config(args):
    from .config import DreamConfigError, load

    path = _get(args, "config") or os.environ.get("PLASTICITY_CONFIG")
    if path and not os.path.isfile(path):
        raise CliError(f"config file {path} does not exist")
    try:
        cfg = load(path) if path else load(None)
    except DreamConfigError as e:
        raise CliError(str(e)) from None
    over = {}
    for opt, key in (("temperature", "temperature"), ("walk_length", "walk_length"), ("seed", "seed"),
                     ("cycles_per_hour", "cycles_per_hour"), ("accept_threshold", "accept_threshold"),
                     ("novelty_threshold", "novelty_threshold"), ("embedding", "embedding"),
                     ("response_prefix", "response_prefix")):
        v = _get(args, opt)
        if v is not None:
            over[key] = v
    judge = _get(args, "judge")
    if judge:
        over["judge"] = [j.strip() for j in judge.split(",") if j.strip()]
    if over:
        from .config import from_dict

        try:
            checked = from_dict(over, source=cfg.source)  # validates each value like the file does
        except DreamConfigError as e:
            raise CliError(str(e).replace("dream.", "--", 1).replace("_", "-")) from None
        for k in over:
            setattr(cfg, k, getattr(checked, k))
    return cfg


def _db(args, cfg):
    from plasticity.memory.cli import default_db

    return str(_get(args, "db") or cfg.db or default_db())


def _client(args, cfg):
    from .client import ServerClient

    url = _get(args, "server") or os.environ.get("PLASTICITY_SERVER") or DEFAULT_SERVER
    key = _get(args, "api_key") or os.environ.get("PLASTICITY_API_KEY") or os.environ.get("VLLM_API_KEY")
    return ServerClient(url, key, cfg.model or None, timeout=cfg.timeout_s)


def _print(obj, as_json):
    if as_json:
        print(json.dumps(obj, ensure_ascii=False, sort_keys=True))
    else:
        print(obj)


def _guarded(fn):
    def wrapper(args):
        from plasticity.memory import MemoryStoreError

        from .client import DreamHTTPError
        from .loop import DreamError

        try:
            return fn(args)
        except (CliError, DreamError, MemoryStoreError, DreamHTTPError, ValueError) as e:
            print(f"plasticity dream: {e}", file=sys.stderr)
            return 2
    return wrapper


def _open_loop(args, cfg, *, lock=True):
    from plasticity.memory import MemoryStore, MemoryStoreError

    from .loop import DreamLoop

    db = _db(args, cfg)
    imp = _get(args, "import_path")
    store = MemoryStore(db, create=bool(imp))
    try:
        if imp:
            res = store.import_path(imp)
            print(f"imported {len(res.note_ids)} notes, {res.links} links from {imp}", file=sys.stderr)
        client = _client(args, cfg)
        loop = DreamLoop(store, client, cfg, submit=not _get(args, "no_submit"),
                         lock=lock)
        loop.prepare()
    except (MemoryStoreError, Exception):
        store.close()
        raise
    return loop


def _describe(res) -> str:
    what = "accepted" if res.accepted else f"rejected ({res.reason})"
    extra = ""
    if res.score is not None:
        extra += f" score {res.score:g}"
    if res.similarity is not None:
        extra += f" max-similarity {res.similarity:.3f}"
    return f"cycle {res.cycle_id}: {what}{extra} [{res.seconds:.1f} s] {res.scenario[:70]!r}"


def _wait_trained(loop, seconds: float) -> dict:
    deadline = time.time() + seconds
    while True:
        loop._safe_sync()
        q = loop.store.queue_counts()
        if (q["queued"] == 0 and q["journaled"] == 0) or time.time() > deadline:
            return q
        time.sleep(1.0)


# ---------------------------------------------------------------- commands

@_guarded
def run_loop(args) -> int:
    cfg = _config(args)
    as_json = bool(_get(args, "json"))
    loop = _open_loop(args, cfg)
    stop = {"n": 0}

    def on_signal(signum, frame):
        stop["n"] += 1
        loop.stop()
        if stop["n"] > 1:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if cfg.min_interval_s > 5 and (_get(args, "cycles") or 0) > 1:
        print(f"plasticity dream: cycles start {cfg.min_interval_s:.0f} s apart (cycles_per_hour = "
              f"{cfg.cycles_per_hour:g}; --cycles-per-hour to change)", file=sys.stderr)
    try:
        cycles = _get(args, "cycles")
        if cycles is not None and cycles < 0:
            raise CliError("--cycles must be ≥ 0")
        results = loop.run(cycles, respect_schedule=cycles is None,
                           on_cycle=lambda r: print(json.dumps(_res_json(r)) if as_json else _describe(r), flush=True))
        q = _wait_trained(loop, _get(args, "wait_trained") or 0.0) if _get(args, "wait_trained") else loop.store.queue_counts()
        summary = {"cycles": len(results), "accepted": sum(r.accepted for r in results),
                   "rejected": {k: v for k, v in loop.stats.rejected.items()}, "failed_cycles": loop.stats.failed_cycles,
                   "submitted": loop.stats.submitted, "reconciled": loop.stats.reconciled,
                   "refused": len(loop.stats.refused), "queue": q, "seed": loop.seed,
                   "stopped": loop._stop.is_set(), "last_error": loop.stats.last_error}
        if as_json:
            print(json.dumps({"summary": summary}), flush=True)
        else:
            print(f"{summary['cycles']} cycles, {summary['accepted']} accepted, rejected {summary['rejected']}, "
                  f"submitted {summary['submitted']}, queue {q}" + (" (stopped)" if summary["stopped"] else ""))
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        loop.close()
        loop.store.close()


def _res_json(r) -> dict:
    return {"cycle": r.cycle_id, "candidate": r.candidate_id, "accepted": r.accepted, "reason": r.reason,
            "score": r.score, "similarity": r.similarity, "notes": list(r.notes), "seconds": round(r.seconds, 2)}


@_guarded
def run_status(args) -> int:
    cfg = _config(args)
    if _get(args, "server"):
        st = _client(args, cfg).call("GET", "/v1/dream/status")
    else:
        from .status import status_dict

        st = status_dict(_db(args, cfg))
        if not st.get("exists"):
            raise CliError(f"{st['db']}: {st.get('error')}")
    if _get(args, "json"):
        print(json.dumps(st, sort_keys=True))
        return 0
    if st.get("error"):
        raise CliError(f"{st.get('db')}: {st['error']}")
    c, d = st["cycles"], st["diversity"]
    rate = "-" if st["accept_rate"] is None else f"{100 * st['accept_rate']:.0f}%"
    print(f"store       {st['db']} ({st['notes']} notes)")
    print(f"cycles      {c['total']} ({c['done']} done, {c['failed']} failed, {c['running']} running)")
    print(f"candidates  {st['generated']} generated, {st['accepted']} accepted ({rate}), {st['rejected']} rejected")
    for reason, n in st["rejected_by_reason"].items():
        print(f"  {reason:<22}{n}")
    q = st["queue"]
    print(f"queue       {q['queued']} queued, {q['journaled']} journaled, {q['trained']} trained")
    print(f"diversity   distinct-1/2/3 {d['distinct_1']:.3f}/{d['distinct_2']:.3f}/{d['distinct_3']:.3f}, "
          f"spread (hashed n-grams) {d['embedding_spread_hash']:.3f} over {d['over_last']} accepted")
    if "runner" in st:
        print(f"runner      {st['runner']}")
    return 0


@_guarded
def run_candidates(args) -> int:
    from plasticity.memory import MemoryStore

    cfg = _config(args)
    acc = True if args.accepted else (False if args.rejected else None)
    with MemoryStore(_db(args, cfg), create=False) as store:
        cands = store.candidates(cycle_id=args.cycle, accepted=acc)
    if args.limit is not None and args.limit >= 0:
        cands = cands[-args.limit:] if args.limit else []
    for c in cands:
        if _get(args, "json"):
            print(json.dumps({"id": c.id, "cycle": c.cycle_id, "memory_ids": list(c.memory_ids), "scenario": c.scenario,
                              "response": c.response, "score": c.score, "accepted": c.accepted, "reason": c.reason,
                              "queue_state": c.queue_state}, ensure_ascii=False))
        else:
            state = f"accepted [{c.queue_state}]" if c.accepted else "rejected"
            print(f"#{c.id} cycle {c.cycle_id} {state} score {c.score}: {c.reason[:120]}")
            print(f"    scenario: {c.scenario[:200]!r}")
            print(f"    response: {c.response[:200]!r}")
    return 0


@_guarded
def run_compare(args) -> int:
    from .compare import compare

    cfg = _config(args)
    k = _get(args, "cycles")
    if not k or k < 1:
        raise CliError("compare needs --cycles K ≥ 1 (the budget of each side)")
    loop = _open_loop(args, cfg)
    try:
        rep = compare(loop, k, seed=loop.seed)
        if _get(args, "wait_trained"):
            rep["queue"] = _wait_trained(loop, args.wait_trained)
    finally:
        loop.close()
        loop.store.close()
    if _get(args, "out"):
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=1, sort_keys=True)
    if _get(args, "json"):
        print(json.dumps(rep, sort_keys=True))
        return 0
    keys = ("n", "distinct_1", "distinct_2", "distinct_3", "embedding_spread")
    print(f"budget: {k} scenario+response generations per side; embedding: {rep['embedding']}")
    print(f"{'':<24}" + "".join(f"{x:>18}" for x in keys))
    for name in ("loop", "naive", "naive_size_matched", "naive_token_matched"):
        row = {"n": "-", **rep[name]}
        print(f"{name:<24}" + "".join(f"{row.get(x, float('nan')):>18.3f}" if x != "n" else f"{row['n']:>18}"
                                      for x in keys))
    print("naive_token_matched: the naive texts cut at the loop set's n-gram count (same n-grams per side)")
    print(f"loop accept rate {100 * rep['loop']['accept_rate']:.0f}%, rejected {rep['loop']['rejected']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m plasticity.dream.cli ARGS`` = ``plasticity dream ARGS``."""
    parser = argparse.ArgumentParser(prog="plasticity")
    sub = parser.add_subparsers(dest="cmd")
    add_parser(sub)
    args = parser.parse_args(["dream", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
