"""``plasticity eval``: held-out perplexity, behaviour tests and continual-learning metrics → a report.

    plasticity eval --server http://localhost:8000 --api-key KEY \\
        --heldout heldout.jsonl --tests refusal ticket-reply my-tests.jsonl --out eval-out
    plasticity eval --model path/to/model --tests format-rule --out eval-out
    plasticity eval --scores-matrix sessions.json --out eval-out
    plasticity eval --server http://localhost:8000 --snapshot A --tests refusal --heldout heldout.jsonl

Writes ``OUT/report.json`` and PNG plots (``pass_rates.png``, ``scores.png``,
``perplexity.png``) next to it. Every input file is validated before a model is
loaded or a server is contacted: a bad file exits with status 2 and writes nothing.
Exit status 1: the server or model failed on at least one request (the report is
still written, with the errors in it). See docs/eval.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

from . import behaviour as bh
from . import snapshot as snp
from .metrics import MetricsError, continual_metrics

SCORES_FIELDS = ("tasks", "scores", "baseline", "higher_is_better", "heldout_ppl")


class EvalInputError(ValueError):
    """A bad command line or input file (exit status 2)."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``plasticity`` sub-commands (``sub`` = ``parser.add_subparsers()``)."""
    p = sub.add_parser("eval", help="held-out perplexity, behaviour tests, continual-learning metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--server", metavar="URL", help="an OpenAI-compatible server, e.g. http://localhost:8000")
    src.add_argument("--model", metavar="DIR", help="a transformers model folder, run locally (greedy)")
    p.add_argument("--snapshot", metavar="NAME|FOLDER",
                   help="evaluate a snapshot and append the figures to its metadata: with --server, a snapshot "
                        "NAME on the server (the live weights are rolled back to it, and stay there); with "
                        "--model, a snapshot FOLDER (task_vector.safetensors + meta.json) added to the model in "
                        "memory. Without --tests/--heldout, the files of its last recorded eval are run again")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the server's API key (default: $PLASTICITY_API_KEY, so it stays out of the shell history)")
    p.add_argument("--served-model", metavar="NAME", default=None,
                   help="model name on the server (default: the first of /v1/models)")
    p.add_argument("--heldout", metavar="FILE",
                   help='held-out text for perplexity: .jsonl ({"text"} a line), .json, or .txt '
                        '(documents split by "\\n<|endoftext|>\\n")')
    p.add_argument("--heldout-seq", type=int, default=256, metavar="N", help="window length in tokens (256)")
    p.add_argument("--heldout-max-tokens", type=int, default=None, metavar="N",
                   help="stop after N held-out tokens (default: all)")
    p.add_argument("--tests", nargs="+", action="extend", metavar="FILE", default=[],
                   help="behaviour test files (JSONL), or names of shipped behaviours "
                        f"({', '.join(bh.list_behaviours()) or 'none'})")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="override every test's max_tokens")
    p.add_argument("--scores-matrix", metavar="FILE",
                   help='JSON: {"tasks": [...], "scores": R (T×T), "baseline"?: [...], '
                        '"higher_is_better"?: true, "heldout_ppl"?: [...]} or just R')
    p.add_argument("--out", metavar="DIR", default="eval-out", help="output folder (default: eval-out)")
    p.add_argument("--no-plots", action="store_true", help="write report.json only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype for --model (default float32)")
    p.add_argument("--device", default="cpu", help="device for --model (default cpu)")
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------- inputs

def load_scores_matrix(path) -> dict:
    """Read and validate a scores-matrix file → ``{"tasks", "scores", "baseline", "higher_is_better",
    "heldout_ppl"}`` (raises :class:`EvalInputError`)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise EvalInputError(f"{p}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalInputError(f"{p}: invalid JSON: {e}") from None
    if isinstance(obj, list):
        obj = {"scores": obj}
    if not isinstance(obj, dict):
        raise EvalInputError(f"{p}: expected an object with 'scores', or a list of rows")
    unknown = set(obj) - set(SCORES_FIELDS)
    if unknown:
        raise EvalInputError(f"{p}: unknown fields {sorted(unknown)} (allowed: {list(SCORES_FIELDS)})")
    if "scores" not in obj:
        raise EvalInputError(f"{p}: missing 'scores' (the T×T matrix R[i][j])")
    hib = obj.get("higher_is_better", True)
    if not isinstance(hib, bool):
        raise EvalInputError(f"{p}: 'higher_is_better' must be true or false")
    try:
        m = continual_metrics(obj["scores"], obj.get("baseline"), higher_is_better=hib, task_names=obj.get("tasks"))
    except MetricsError as e:
        raise EvalInputError(f"{p}: {e}") from None
    if obj.get("tasks") is not None and not (isinstance(obj["tasks"], list)
                                             and all(isinstance(t, str) and t for t in obj["tasks"])):
        raise EvalInputError(f"{p}: 'tasks' must be a list of non-empty strings")
    ppl = obj.get("heldout_ppl")
    if ppl is not None:
        T = m["T"]
        if not isinstance(ppl, list) or len(ppl) not in (T, T + 1):
            raise EvalInputError(f"{p}: 'heldout_ppl' must be a list of T = {T} values (after each session) "
                                 f"or T + 1 (before any session, then after each)")
        for k, v in enumerate(ppl):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and v < float("inf")):
                raise EvalInputError(f"{p}: heldout_ppl[{k}] must be a positive finite number, got {v!r}")
    return {"metrics": m, "heldout_ppl": ppl}


def resolve_tests(items: list[str]) -> list[tuple[str, Path]]:
    """``[(name, path)]`` for ``--tests`` items: existing files, or names of shipped behaviours."""
    out, names = [], set()
    shipped = bh.list_behaviours()
    for it in items:
        path = Path(it)
        if path.exists():
            name = path.parent.name if path.stem == "tests" and path.parent.name else path.stem
        elif it in shipped:
            name, path = it, bh.behaviour_files(it)["tests"]
        else:
            raise EvalInputError(f"--tests {it}: no such file, and not a shipped behaviour ({', '.join(shipped)})")
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        out.append((name, path))
    return out


# --------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except EvalInputError as e:
        print(f"plasticity eval: {e}", file=sys.stderr)
        return 2
    except (bh.BehaviourFileError, snp.SnapshotEvalError) as e:
        print(f"plasticity eval: {e}", file=sys.stderr)
        return 2


def _snapshot_target(args):
    """The snapshot to evaluate (or None); fills --tests/--heldout from its attached ones when absent."""
    name = getattr(args, "snapshot", None)
    if name is None:
        return None
    if args.server:
        api_key = args.api_key or os.environ.get("PLASTICITY_API_KEY") or None
        snap = snp.ServerSnapshot(args.server, name, api_key)
    elif args.model:
        snap = snp.LocalSnapshot(name)
    else:
        raise EvalInputError("--snapshot needs a model: --server URL or --model DIR")
    try:
        meta = snap.meta()
    except bh.EvalHTTPError as e:
        raise EvalInputError(str(e)) from None
    if not (args.tests or args.heldout):
        tests, held = snp.attached_tests(meta)
        if not (tests or held):
            raise EvalInputError(f"--snapshot {name}: no tests attached to it yet; give --tests and/or --heldout")
        args.tests, args.heldout = tests, held
        print(f"snapshot {snap.name}: running its attached tests ({len(tests)} files"
              + (", held-out text" if held else "") + ")")
    return snap


def _run(args) -> int:
    if not (args.heldout or args.tests or args.scores_matrix or getattr(args, "snapshot", None)):
        raise EvalInputError("nothing to do: give --heldout, --tests and/or --scores-matrix")
    if (args.heldout or args.tests) and not (args.server or args.model):
        raise EvalInputError("--heldout and --tests need a model: --server URL or --model DIR")
    if args.heldout_seq < 2:
        raise EvalInputError("--heldout-seq must be ≥ 2")
    if args.heldout_max_tokens is not None and args.heldout_max_tokens < 2:
        raise EvalInputError("--heldout-max-tokens must be ≥ 2")
    if args.max_tokens is not None and not 1 <= args.max_tokens <= bh.MAX_TOKENS_LIMIT:
        raise EvalInputError(f"--max-tokens must be in 1..{bh.MAX_TOKENS_LIMIT}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise EvalInputError(f"--model {args.model}: not a model folder (no config.json)")

    # 1. Validate every input before touching a model or a server (the snapshot's metadata is
    #    read after the files named on the command line, and its attached files are checked too).
    suites = [(name, path, bh.load_tests(path)) for name, path in resolve_tests(args.tests)]
    texts = bh.read_texts(args.heldout) if args.heldout else None
    snap = _snapshot_target(args)
    snapshot = snap.name if snap is not None else None
    if snap is not None and not suites and texts is None:  # its attached files
        suites = [(name, path, bh.load_tests(path)) for name, path in resolve_tests(args.tests)]
        texts = bh.read_texts(args.heldout) if args.heldout else None
    scores = load_scores_matrix(args.scores_matrix) if args.scores_matrix else None
    show = not args.no_progress
    api_key = args.api_key or os.environ.get("PLASTICITY_API_KEY") or None

    report: dict = {"plasticity_eval": 1, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "snapshot": snapshot, "source": None, "heldout": None, "behaviour": None, "continual": None,
                    "plots": []}
    errors = 0
    gen = None
    try:
        # 2. The model (only when something needs it).
        if not (texts is not None or suites):
            pass
        elif args.server:
            gen = bh.server_generator(args.server, api_key, args.served_model)
            report["source"] = {"server": gen.base, "model": gen.model}
            if snap is not None:
                snap.activate()
                print(f"the server now serves snapshot {snap.name} (rolled back, bit-identical)")
        elif args.model:
            gen = bh.local_generator(args.model, dtype=args.dtype, device=args.device)
            report["source"] = {"model_dir": str(Path(args.model).resolve()), "dtype": args.dtype}
            if snap is not None:
                done = snap.apply_to(gen.model)
                report["source"]["snapshot_dir"] = str(snap.dir.resolve())
                print(f"added snapshot {snap.name} to the model ({done['tensors']} tensors)")

        # 3. Held-out perplexity.
        if texts is not None:
            kw = dict(seq=args.heldout_seq, max_tokens=args.heldout_max_tokens, progress="held-out perplexity" if show else False)
            if args.server:
                r = bh.heldout_ppl_server(gen.base, texts, api_key=api_key, model=gen.model, **kw)
            else:
                r = bh.heldout_ppl_local(gen.model, gen.tokenizer, texts, **kw)
            report["heldout"] = {"file": str(args.heldout), **r}
            print(f"held-out perplexity {r['ppl']:.3f} ({r['tokens']} tokens, {r['windows']} windows of ≤ {r['seq']})")
    except bh.EvalHTTPError as e:
        print(f"plasticity eval: {e}", file=sys.stderr)
        return 1

    # 4. Behaviour tests.
    if suites:
        files, n_all, pass_all = {}, 0, 0
        for name, path, tests in suites:
            if args.max_tokens is not None:
                tests = [_with_max_tokens(t, args.max_tokens) for t in tests]
            res = bh.run_tests(gen, tests, progress=name if show else False)
            files[name] = {"file": str(path), **res}
            n_all += res["n"]
            pass_all += res["passed"]
            errors += res["errors"]
            print(f"{name}: {res['passed']}/{res['n']} passed ({100 * res['pass_rate']:.0f}%)"
                  + (f", {res['errors']} errors" if res["errors"] else ""))
        report["behaviour"] = {"pass_rate": pass_all / n_all if n_all else None, "files": files}

    # 5. Continual-learning metrics.
    if scores is not None:
        m = scores["metrics"]
        report["continual"] = dict(m, heldout_ppl=scores["heldout_ppl"])
        print(_format_metrics(m))

    # 6. Report and plots.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        report["plots"] = _plots(report, out)
    from .report import write_json

    if snap is not None:
        entry = snp.summary(report)
        try:
            snap.record(entry)
            report["snapshot_recorded"] = True
            print(f"recorded in snapshot {snap.name}'s metadata (evals)")
        except (bh.EvalHTTPError, OSError) as e:
            report["snapshot_recorded"] = False
            print(f"plasticity eval: could not record the figures in snapshot {snap.name}: {e}", file=sys.stderr)
            errors += 1
    path = write_json(out / "report.json", report)
    n_plots = len(report["plots"])
    print(f"wrote {path}" + (f" and {n_plots} plot{'s' if n_plots > 1 else ''}" if n_plots else ""))
    if errors:
        print(f"plasticity eval: {errors} requests failed (see 'error' in the report)", file=sys.stderr)
        return 1
    return 0


def _with_max_tokens(t: bh.BehaviourTest, n: int) -> bh.BehaviourTest:
    import dataclasses

    return dataclasses.replace(t, max_tokens=n)


def _fmt(x) -> str:
    return "n/a (T = 1)" if x is None else f"{x:+.4f}"


def _format_metrics(m: dict) -> str:
    lines = [f"continual learning over T = {m['T']} sessions ({', '.join(m['tasks'])}):",
             f"  overall performance (ACC) {m['overall_performance']:.4f}",
             f"  backward transfer (BWT)   {_fmt(m['backward_transfer'])}",
             "  forward transfer (FWT)    "
             + ("n/a (no baseline)" if m["baseline"] is None and m["T"] > 1 else _fmt(m["forward_transfer"])),
             f"  forgetting (mean)         {_fmt(m['forgetting'])}",
             f"  forgetting (worst)        {_fmt(m['worst_forgetting'])}"
             + (f" on {m['worst_forgetting_task']}" if m["worst_forgetting_task"] else "")]
    return "\n".join(lines)


def _plots(report: dict, out: Path) -> list[str]:
    from . import report as rp

    if not rp.plots_available():
        print("plasticity eval: matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    made = []
    beh = report.get("behaviour")
    if beh:
        made.append(rp.plot_pass_rates({k: v["pass_rate"] for k, v in beh["files"].items()}, out / "pass_rates.png"))
    cont = report.get("continual")
    if cont:
        made.append(rp.plot_score_matrix(cont["scores"], out / "scores.png", task_names=cont["tasks"],
                                         higher_is_better=cont["higher_is_better"]))
        ppl = cont.get("heldout_ppl")
        if ppl:
            labels = ([] if len(ppl) == cont["T"] else ["before"]) + [f"after {t}" for t in cont["tasks"]]
            made.append(rp.plot_perplexity(dict(zip(labels, ppl)), out / "perplexity.png",
                                           title="Held-out perplexity across sessions"))
    return [p.name for p in made]
