"""One experiment over several seeds: ``plasticity experiment NAME --seeds 0,1,2 [--jobs 2]``.

Each seed is a full run of its own in ``OUT/seed-N`` (a separate process, so ``--jobs`` runs them
side by side, one torch thread each by default). A seed whose ``results.json`` is already there for
the same model sha and budget is not run again, so an interrupted sweep resumes. Then
``OUT/summary.json``, ``OUT/table.md`` and ``OUT/report.md`` give every row's numbers as the mean
and the spread (min–max) over the seeds, next to each seed's own answer sentence: one seed is not
an answer, and an answer that changes with the seed shows as such.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from .report import fmt

RATE_SUFFIXES = ("_pass", "_rate", "agreement")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> [0, 1, 2]; at least one, no repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise SystemExit(f"plasticity experiment: --seeds {text!r}: expected numbers like 0,1,2 or 0-2")
    if not out or len(set(out)) != len(out):
        raise SystemExit(f"plasticity experiment: --seeds {text!r}: give each seed once")
    return out


def _same_run(path: Path, model_sha: str, budget: dict) -> bool:
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (not r.get("quick") and r.get("setup", {}).get("model_sha256") == model_sha
            and r.get("budget") == budget and not r.get("sanity_problems"))


def run_seeds(name: str, args, seeds: list[int], jobs: int = 1, log=None) -> dict:
    """Run the missing seeds (``jobs`` at a time), then aggregate every seed's results."""
    import importlib

    from . import common as C

    log = log or C.Log(name, enabled=not getattr(args, "no_progress", False))
    if getattr(args, "quick", False):
        raise SystemExit("plasticity experiment: --seeds is for full runs (--quick proves the pipeline, not answers)")
    mod = importlib.import_module(f"plasticity.experiments.{C.EXPERIMENTS[name][0]}")
    model_dir = mod.BUDGETS.model_dir(args)
    budget = json.loads(json.dumps(mod.BUDGETS.pick(args, model_dir).as_dict()))
    sha = C.model_identity(model_dir)["model_sha256"]
    out = Path(args.out or Path("experiments-out") / name)
    todo = [s for s in seeds if not _same_run(out / f"seed-{s}" / "results.json", sha, budget)]
    log(f"seeds {seeds} on {model_dir.name}: {len(seeds) - len(todo)} already done, running {todo} ({jobs} at a time)")
    running: list[tuple[int, subprocess.Popen]] = []
    failed = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < max(1, jobs):
            s = queue.pop(0)
            cmd = [sys.executable, "-m", "plasticity.cli", "experiment", name, "--model", str(model_dir),
                   "--seed", str(s), "--out", str(out / f"seed-{s}"), "--threads", str(args.threads or 1)]
            for opt in ("heldout", "replay"):
                if getattr(args, opt, None):
                    cmd += [f"--{opt}", str(getattr(args, opt))]
            if getattr(args, "no_progress", False):
                cmd.append("--no-progress")
            running.append((s, subprocess.Popen(cmd)))
        s, p = running.pop(0)
        if p.wait() != 0:
            failed.append(s)
    if failed:
        raise SystemExit(f"plasticity experiment: seeds {failed} of {name} failed (see their output above)")
    results = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in seeds]
    return write_summary(out, results, [f"seed-{s}" for s in seeds])


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate_rows(results: list[dict]) -> list[dict]:
    """Row i of every seed -> one row: a value every seed agrees on as it is, differing numbers as
    {mean, min, max, sd, values}, anything else that differs as {values}. The seeds must have the same rows (same budget)."""
    counts = {len(r["rows"]) for r in results}
    if len(counts) != 1:
        raise ValueError(f"the seeds have different numbers of rows ({sorted(counts)}): different budgets?")
    rows = []
    for i in range(counts.pop()):
        per = [r["rows"][i] for r in results]
        row = {}
        for k in per[0]:
            vals = [p.get(k) for p in per]
            if all(v == vals[0] for v in vals):
                row[k] = vals[0]  # a setting (lr, N), or a measurement every seed agrees on
            elif all(_numeric(v) for v in vals):
                row[k] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
                          "sd": statistics.stdev(vals), "values": vals}
            else:
                row[k] = {"values": vals}
        rows.append(row)
    return rows


def cell(key: str, v) -> str:
    """A table cell: ``mean [min, max]`` for numbers (rates in %, bytes in MB), the value or ``a / b / c``
    otherwise."""
    if key.endswith("_bytes"):
        mb = lambda x: f"{x / 2**20:.2f} MB"  # noqa: E731
        if isinstance(v, dict) and "mean" in v:
            return f"{mb(v['mean'])} [{v['min'] / 2**20:.2f}, {v['max'] / 2**20:.2f}]"
        if _numeric(v):
            return mb(v)
    if isinstance(v, dict) and "mean" in v:
        if key.endswith(RATE_SUFFIXES):
            f = lambda x: f"{100 * x:.0f}"  # noqa: E731
            return f"{f(v['mean'])}% [{f(v['min'])}, {f(v['max'])}]"
        if key.endswith("change") and "nll" not in key:
            f = lambda x: f"{100 * x:+.1f}"  # noqa: E731
            return f"{f(v['mean'])}% [{f(v['min'])}, {f(v['max'])}]"
        return f"{fmt(v['mean'])} [{fmt(v['min'])}, {fmt(v['max'])}]"
    if isinstance(v, dict) and "values" in v:
        return " / ".join(fmt(x) for x in v["values"])
    if _numeric(v) and key.endswith(RATE_SUFFIXES):
        return f"{100 * v:.0f}%"
    if _numeric(v) and key.endswith("change") and "nll" not in key:
        return f"{100 * v:+.1f}%"
    return fmt(v)


def write_summary(out: Path, results: list[dict], folders: list[str]) -> dict:
    """summary.json, table.md and report.md over the seeds' results (written into ``out``)."""
    from plasticity.eval.report import write_json

    first = results[0]
    setup = first["setup"]
    shas = {r["setup"].get("model_sha256") for r in results}
    if len(shas) != 1:
        raise ValueError(f"the seeds ran on different model files: {sorted(map(str, shas))}")
    rows = aggregate_rows(results)
    cols = first.get("columns") or [[k, k] for k in first["rows"][0]]
    table = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    table += ["| " + " | ".join(cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    seeds = [r["setup"].get("seed") for r in results]
    ident = f"{setup.get('model_name')} (model.safetensors sha256 {setup.get('model_sha256')})"
    summary = {"experiment": first["experiment"], "model": setup.get("model_name"),
               "model_sha256": setup.get("model_sha256"), "seeds": seeds, "budget": first.get("budget"),
               "answers": {str(s): r["answer"] for s, r in zip(seeds, results)},
               "seconds": [r.get("seconds") for r in results], "rows": rows, "columns": cols}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    plot = seeds_plot(out, first["experiment"], rows, cols, ident=setup, n_seeds=len(results))
    summary["plots"] = [plot] if plot else []
    md = [f"# Experiment `{first['experiment']}` over {len(results)} seeds: {first.get('title', '')}", "",
          f"**Question.** {first.get('question', '')}", "",
          f"**Model.** {ident}; seeds {', '.join(map(str, seeds))}; full budget `{json.dumps(first.get('budget'))}`.", "",
          "**Each seed's answer** (computed from its own numbers):", ""]
    md += [f"- seed {s}: {r['answer']} ([report]({f}/report.md), {r.get('seconds', 0):.0f} s)"
           for s, r, f in zip(seeds, results, folders)]
    md += ["", f"## Results: mean [min, max] over {len(results)} seeds", "", *table, "",
           "A cell with one number was the same for every seed. Each seed's own plots are in its folder.", ""]
    md += [f"![{p}]({p})" for p in summary["plots"]] + [""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    write_json(out / "summary.json", summary)
    return summary


# What the seed figure shows, where a row has it: behaviour, over-generalisation, forgetting.
PLOTTED = {"heldout_pass": "held-out pass", "control_pass": "controls pass", "general_pass": "general questions",
           "ppl_change": "held-out ppl change (×100 %)"}


def seeds_plot(out: Path, experiment: str, rows: list[dict], cols: list, *, ident: dict, n_seeds: int) -> str | None:
    """``seeds.png``: each plotted metric's mean per row with its min-max bar, captioned with the model,
    its sha and the number of seeds."""
    from .plots import seed_bars, set_caption

    keys = [k for k in PLOTTED if any(isinstance(r.get(k), (int, float, dict)) and r.get(k) is not None
                                      and not isinstance(r.get(k), bool) for r in rows)]
    if not keys:
        return None

    def spread(v):
        if isinstance(v, dict) and "mean" in v:
            return (v["mean"], v["min"], v["max"])
        return (float(v), float(v), float(v)) if _numeric(v) else (0.0, 0.0, 0.0)

    # a row's label: its settings from the left (lr, data; schedule, N) until every label is unique
    settings = [k for k, _ in cols if k not in PLOTTED and not any(isinstance(r.get(k), dict) for r in rows)]
    labels = [""] * len(rows)
    for k in settings[:3]:
        labels = [f"{lab} {fmt(r.get(k))}".strip() if r.get(k) is not None else lab for lab, r in zip(labels, rows)]
        if len(set(labels)) == len(labels):
            break
    labels = [lab[:40] for lab in labels]
    set_caption(f"{ident.get('model_name')}, model.safetensors sha256 {str(ident.get('model_sha256'))[:12]}, "
                f"{n_seeds} seeds: bars are the mean, whiskers min-max")
    try:
        return seed_bars(out / "seeds.png", labels, {PLOTTED[k]: [spread(r.get(k)) for r in rows] for k in keys},
                         title=f"{experiment}: {n_seeds} seeds")
    finally:
        set_caption("")
