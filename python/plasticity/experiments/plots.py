"""The experiments' plots (matplotlib, Agg backend): lines, bars, heatmaps and small panels; each
returns the file name, or None when matplotlib is not installed."""

from __future__ import annotations

from pathlib import Path

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# Which model, model sha and seeds every figure comes from (set by the experiment's start), written
# under each plot so that a figure copied out of its report still says what it shows.
_caption = ""


def set_caption(text: str) -> None:
    global _caption
    _caption = text


def _save(plt, fig, path: Path) -> str:
    if _caption:
        fig.text(0.0, -0.01, _caption, fontsize=7, ha="left", va="top", color="dimgrey")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p.name


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def line_plot(path: Path, series: dict[str, tuple[list, list]], *, title: str, xlabel: str, ylabel: str,
              logx: bool = False, logy: bool = False, right: dict[str, tuple[list, list]] | None = None,
              right_label: str = "", hline: float | None = None) -> str | None:
    """One line per series {label: (xs, ys)}; optional second y axis; returns the file name or None."""
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls=":")
    if "pass" in ylabel:
        ax.set_ylim(-0.03, 1.05)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for k, (label, (xs, ys)) in enumerate(right.items()):
            ax2.plot(xs, ys, marker="s", ms=3, ls="--", label=label, color=f"C{(len(series) + 1 + k) % 10}")
        ax2.set_ylabel(right_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def bar_plot(path: Path, groups: list[str], bars: dict[str, list[float]], *, title: str, ylabel: str,
             logy: bool = False) -> str | None:
    """Grouped bars: one group per x label, one bar per series."""
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(bars)) * 0.6 + 2), 3.8))
    n = max(1, len(bars))
    w = 0.8 / n
    for i, (label, vals) in enumerate(bars.items()):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(groups))]
        ax.bar(xs, vals, width=w, label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=15, ha="right", fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(bars) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


def heatmap(path: Path, M: list[list[float]], rows: list[str], cols: list[str], *, title: str,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> str | None:
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 1.2 + 0.6 * len(rows)))
    im = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    lo, hi = im.get_clim()
    for i, r in enumerate(M):
        for j, v in enumerate(r):
            x = (v - lo) / (hi - lo) if hi > lo else 0.5
            bright = x > 0.6 if not cmap.endswith("_r") else x < 0.4
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_title(title)
    return _save(plt, fig, path)


def panel_bars(path: Path, labels: list[str], metrics: dict[str, list[float]], *, title: str) -> str | None:
    """One small bar chart per metric (each on its own scale), one bar per label."""
    if not _can_plot():
        return None
    plt = _plt()
    k = len(metrics)
    fig, axes = plt.subplots(1, k, figsize=(max(6.0, 2.4 * k), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, vals) in zip(axes[0], metrics.items()):
        ax.bar(range(len(labels)), vals, color=[colors[i % len(colors)] for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.axhline(0, color="black", lw=0.6)
        if "pass" in name or "agreement" in name or "exact" in name:
            ax.set_ylim(0, 1.08)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path)


def seed_bars(path: Path, labels: list[str], metrics: dict[str, list[tuple[float, float, float]]], *,
              title: str) -> str | None:
    """One small bar chart per metric, one bar per row: the mean over seeds with a min-max bar."""
    if not _can_plot():
        return None
    plt = _plt()
    k = len(metrics)
    fig, axes = plt.subplots(1, k, figsize=(max(6.0, max(2.6, 0.32 * len(labels)) * k), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, vals) in zip(axes[0], metrics.items()):
        means = [v[0] for v in vals]
        err = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
        ax.bar(range(len(labels)), means, yerr=err, capsize=3,
               color=[colors[i % len(colors)] for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.axhline(0, color="black", lw=0.6)
        if "pass" in name or "questions" in name:
            ax.set_ylim(0, 1.08)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path)
