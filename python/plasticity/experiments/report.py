"""An experiment's outputs: ``result.json``, a Markdown table with the answer, and the sanity
checks every result passes before it is written."""

from __future__ import annotations

import json
import math
from pathlib import Path


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits, 4)}g}"
    return str(x)


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def sanity_problems(result: dict) -> list[str]:
    """Problems in a result: non-finite numbers, rates outside [0, 1], perplexities ≤ 0, missing fields."""
    out = []
    for k in ("experiment", "answer", "rows", "setup", "quick", "seconds"):
        if k not in result:
            out.append(f"missing field {k!r}")
    if not isinstance(result.get("answer"), str) or len(result.get("answer", "")) < 20:
        out.append("answer is not a sentence")
    if not result.get("rows"):
        out.append("no rows")
    for path, v in _walk(result):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        leaf = path.rsplit(".", 1)[-1].split("[")[0]
        if not math.isfinite(v):
            out.append(f"{path} = {v} (not finite)")
        elif (leaf.endswith(("_pass", "_rate", "agreement"))) and not 0 <= v <= 1:
            out.append(f"{path} = {v} (a rate outside [0, 1])")
        elif (leaf == "ppl" or leaf.endswith("_ppl")) and not v > 0:
            out.append(f"{path} = {v} (perplexity ≤ 0)")
    return out


def _md_table(rows: list[dict], columns: list[tuple]) -> str:
    """Markdown table; ``columns``: (key, header[, formatter])."""
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c[0])
            cells.append(c[2](v) if len(c) > 2 and v is not None else fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: dict, *, title: str, question: str, columns: list[tuple],
                  notes: list[str] = (), extra_md: str = "") -> dict:
    """results.json + table.md + report.md into ``out`` (plots are already there, listed in result["plots"])."""
    from plasticity.eval.report import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault("plots", [])
    # what the seed aggregate (seeds.py) needs to lay out the same table over several runs
    result.update(title=title, question=question, columns=[[c[0], c[1]] for c in columns])
    problems = sanity_problems(result)
    result["sanity_problems"] = problems
    table = _md_table(result["rows"], columns)
    (out / "table.md").write_text(table, encoding="utf-8")
    s = result["setup"]
    setup_lines = "\n".join(f"- {k}: `{json.dumps(v) if not isinstance(v, str) else v}`" for k, v in s.items())
    plots = "\n".join(f"![{p}]({p})" for p in result["plots"])
    md = [f"# Experiment `{result['experiment']}`: {title}", "",
          f"**Question.** {question}", "",
          f"**Answer (computed from the numbers below).** {result['answer']}", "",
          f"Run: {'--quick (small budget: a smoke test, not evidence)' if result['quick'] else 'full budget'}, "
          f"{result['seconds']:.0f} s wall, {result.get('created', '')}.", "",
          "## Results", "", table, extra_md, "", "## Plots", "", plots or "(matplotlib not installed: none)", "",
          "## Setup", "", setup_lines, ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if problems:
        md += ["## Sanity problems", ""] + [f"- {p}" for p in problems] + [""]
    md += ["Files: `results.json` (every number, per-step losses), `table.md`, the PNG plots.", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    write_json(out / "results.json", result)
    return result
