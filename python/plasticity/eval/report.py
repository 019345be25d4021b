"""Eval reports: a JSON file, PNG plots (matplotlib, Agg backend) and progress bars.

- :func:`write_json` writes ``report.json`` atomically (temporary file, fsync, rename),
  with ``NaN``/``inf`` refused (strict JSON).
- :func:`plot_score_matrix` heatmap of R (rows: after session i, columns: task j).
- :func:`plot_pass_rates` bar chart of behaviour-test pass rates.
- :func:`plot_perplexity` held-out perplexity per session (a line).
- :func:`progress` wraps an iterable in a progress bar on stderr: ``tqdm`` on a terminal
  when it is importable, else a small built-in bar (a line per 10% on a pipe); silent
  when disabled.

matplotlib is imported only inside the plot functions, so the JSON report and the
metrics work without it; :func:`plots_available` says whether it is installed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["write_json", "plots_available", "plot_score_matrix", "plot_pass_rates", "plot_perplexity",
           "progress", "SimpleProgress"]


# --------------------------------------------------------------------------- JSON

def write_json(path, obj) -> Path:
    """Write ``obj`` as indented, strict JSON (no NaN/inf) to ``path`` atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_default) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- plots

def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return p


def plot_score_matrix(R: Sequence[Sequence[float]], path, *, task_names: Sequence[str] | None = None,
                      title: str = "Scores after each session", higher_is_better: bool = True) -> Path:
    """Heatmap of R: row i = after session i, column j = task j; each cell annotated."""
    plt = _plt()
    T = len(R)
    names = list(task_names) if task_names is not None else [f"task{j}" for j in range(T)]
    vals = [float(x) for row in R for x in row]
    lo, hi = min(vals), max(vals)
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0  # pass rates / accuracies: a fixed scale, comparable across reports
    elif lo == hi:
        lo, hi = lo - 1.0, hi + 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * T, 1.0 + 0.8 * T))
    cmap = "viridis" if higher_is_better else "viridis_r"
    im = ax.imshow(R, cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(T), names, rotation=30, ha="right")
    ax.set_yticks(range(T), [f"after {n}" for n in names])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("training session")
    mid = (lo + hi) / 2
    for i in range(T):
        for j in range(T):
            v = float(R[i][j])
            light = (v < mid) if higher_is_better else (v > mid)
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if light else "black")
    ax.set_title(title)
    return _save(fig, path)


def plot_pass_rates(rates: Mapping[str, float | None], path, *, title: str = "Behaviour tests: pass rate") -> Path:
    """Bar chart of pass rates in [0, 1] (``None`` = not run, drawn as an empty slot)."""
    plt = _plt()
    names = list(rates)
    vals = [0.0 if rates[n] is None else float(rates[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.2))
    bars = ax.bar(range(len(names)), vals, color="#3b7dd8")
    for b, n, v in zip(bars, names, vals):
        label = "n/a" if rates[n] is None else f"{100 * v:.0f}%"
        ax.text(b.get_x() + b.get_width() / 2, min(v, 1.0) + 0.02, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("pass rate")
    ax.set_title(title)
    return _save(fig, path)


def plot_perplexity(values: Sequence[float] | Mapping[str, float], path, *,
                    title: str = "Held-out perplexity") -> Path:
    """Line of held-out perplexity: a list (x = 0, 1, …) or an ordered mapping label → value."""
    plt = _plt()
    if isinstance(values, Mapping):
        labels, ys = [str(k) for k in values], [float(v) for v in values.values()]
    else:
        ys = [float(v) for v in values]
        labels = [str(i) for i in range(len(ys))]
    if not ys or any(not math.isfinite(y) for y in ys):
        raise ValueError("perplexity plot needs at least one finite value")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.7 * len(ys)), 3.2))
    ax.plot(range(len(ys)), ys, marker="o", color="#d8553b")
    for x, y in enumerate(ys):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(range(len(ys)), labels, rotation=30 if len(ys) > 4 else 0, ha="right" if len(ys) > 4 else "center")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.margins(y=0.2)
    return _save(fig, path)


# --------------------------------------------------------------------------- progress

class SimpleProgress:
    """A dependency-free progress bar on a stream (stderr): ``label [#####-----] 5/10 1.2 it/s``.

    Redraws in place on a terminal (at most ~10 times a second); on a pipe it prints a
    line at every 10% only, so logs stay short.
    """

    def __init__(self, iterable: Iterable, total: int | None = None, desc: str = "", stream=None, width: int = 24):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.width = desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.n = 0
        self.t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def _line(self) -> str:
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        if self.total:
            filled = int(self.width * self.n / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            return f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.1f} it/s"
        return f"{self.desc} {self.n} {rate:.1f} it/s"

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if final or now - self._last_draw >= 0.1:
                self.stream.write("\r" + self._line() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
        elif self.total:
            decile = (10 * self.n) // self.total
            if decile > self._last_decile:
                self.stream.write(self._line() + "\n")
                self.stream.flush()
                self._last_decile = decile
        elif final:
            self.stream.write(self._line() + "\n")

    def __iter__(self):
        self._draw()
        try:
            for x in self.iterable:
                yield x
                self.n += 1
                self._draw()
        finally:
            self._draw(final=True)

    def __len__(self):
        return self.total or 0


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", enabled: bool = True,
             stream=None):
    """A progress bar over ``iterable`` on stderr (``tqdm`` on a terminal if importable); the iterable
    itself when disabled."""
    if not enabled:
        return iterable
    if stream is None and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=True)
    # Not a terminal (a log file, CI) or no tqdm: a few plain lines instead of carriage-return redraws.
    return SimpleProgress(iterable, total=total, desc=desc, stream=stream)
