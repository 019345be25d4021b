"""Continual-learning metrics from a score matrix, and perplexity helpers.

Pure Python (no numpy, torch or matplotlib needed).

Notation
--------
A sequence of ``T`` training sessions, one per task. After session ``i`` every
task ``j`` is evaluated:

    R[i][j] = score on task j after training on tasks 0..i      (i, j = 0..T-1)

and optionally

    b[j]    = score on task j of the model before any session   (the baseline)

Scores are "higher is better" (a pass rate, an accuracy). For a "lower is
better" score (a perplexity, a loss) pass ``higher_is_better=False``: every
metric below is then computed on ``-R`` (and ``-b``), so a positive BWT still
means "earlier tasks got better" and a positive forgetting still means "worse".

Metrics (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory", §4, for ACC, BWT
and FWT; Chaudhry et al. 2018, "Riemannian Walk", §4, for forgetting):

    ACC (overall performance) = 1/T     · Σ_{j=0}^{T-1} R[T-1][j]
    BWT (backward transfer)   = 1/(T-1) · Σ_{j=0}^{T-2} (R[T-1][j] − R[j][j])
    FWT (forward transfer)    = 1/(T-1) · Σ_{j=1}^{T-1} (R[j-1][j] − b[j])
    f_j (forgetting of task j) = max_{l=0..T-2} R[l][j] − R[T-1][j]     for j = 0..T-2
    Forgetting                = 1/(T-1) · Σ_{j=0}^{T-2} f_j
    worst forgetting          = max_{j=0..T-2} f_j

With ``T = 1`` there is no earlier task: BWT, FWT and both forgettings are
``None`` (undefined), ACC is ``R[0][0]``. FWT is also ``None`` without a
baseline. Extra outputs: ``learning_accuracy`` = 1/T · Σ_j R[j][j] (how well
each task was learnt just after its own session), ``acc_curve[k]`` = mean of
``R[k][0..k]`` (the average over the tasks seen so far, after session k) and the
per-task ``forgetting_per_task`` (the f_j).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

__all__ = [
    "MetricsError",
    "validate_scores",
    "overall_performance",
    "backward_transfer",
    "forward_transfer",
    "forgetting_per_task",
    "forgetting",
    "worst_forgetting",
    "learning_accuracy",
    "acc_curve",
    "continual_metrics",
    "perplexity",
    "perplexity_from_logprobs",
    "relative_change",
]


class MetricsError(ValueError):
    """A score matrix, baseline or perplexity input that cannot be used."""


def _number(x, where: str) -> float:
    # bool is an int subclass: True/False as a score is almost surely a mistake.
    if isinstance(x, bool) or not isinstance(x, Real):
        raise MetricsError(f"{where} must be a number, got {type(x).__name__} {x!r}")
    v = float(x)
    if math.isnan(v):
        raise MetricsError(f"{where} is NaN")
    if math.isinf(v):
        raise MetricsError(f"{where} is infinite")
    return v


def _as_rows(R) -> list[list]:
    if hasattr(R, "tolist") and not isinstance(R, (list, tuple)):  # numpy arrays, torch tensors
        R = R.tolist()
    if isinstance(R, (str, bytes)) or not isinstance(R, Sequence):
        raise MetricsError(f"the score matrix must be a list of rows, got {type(R).__name__}")
    return list(R)


def validate_scores(R, baseline=None) -> tuple[list[list[float]], list[float] | None]:
    """Check and copy ``R`` (T×T, finite numbers) and ``baseline`` (length T or None).

    Returns ``(R, baseline)`` as lists of floats. Raises :class:`MetricsError`
    for an empty matrix, a ragged or non-square matrix, a non-number, NaN or
    infinity, or a baseline of the wrong length.
    """
    rows = _as_rows(R)
    T = len(rows)
    if T == 0:
        raise MetricsError("the score matrix is empty (need at least one session)")
    out: list[list[float]] = []
    for i, row in enumerate(rows):
        if hasattr(row, "tolist") and not isinstance(row, (list, tuple)):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise MetricsError(f"row {i} of the score matrix must be a list, got {type(row).__name__}")
        if len(row) != T:
            raise MetricsError(f"the score matrix must be square T×T (T = {T} sessions = tasks): "
                               f"row {i} has {len(row)} entries")
        out.append([_number(x, f"R[{i}][{j}]") for j, x in enumerate(row)])
    b = None
    if baseline is not None:
        if hasattr(baseline, "tolist") and not isinstance(baseline, (list, tuple)):
            baseline = baseline.tolist()
        if isinstance(baseline, (str, bytes)) or not isinstance(baseline, Sequence):
            raise MetricsError(f"the baseline must be a list of T numbers, got {type(baseline).__name__}")
        if len(baseline) != T:
            raise MetricsError(f"the baseline has {len(baseline)} entries, the score matrix has T = {T} tasks")
        b = [_number(x, f"baseline[{j}]") for j, x in enumerate(baseline)]
    return out, b


def _prep(R, baseline=None, higher_is_better: bool = True):
    R, b = validate_scores(R, baseline)
    if not isinstance(higher_is_better, bool):
        raise MetricsError("higher_is_better must be true or false")
    if not higher_is_better:
        R = [[-x for x in row] for row in R]
        b = None if b is None else [-x for x in b]
    return R, b


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def overall_performance(R, *, higher_is_better: bool = True) -> float:
    """ACC = 1/T · Σ_j R[T-1][j]: the mean score over all tasks after the last session.

    Reported in the scores' own units (never negated, whatever ``higher_is_better``).
    """
    R, _ = validate_scores(R)
    return sum(R[-1]) / len(R)


def learning_accuracy(R) -> float:
    """LA = 1/T · Σ_j R[j][j]: the mean score of each task right after its own session."""
    R, _ = validate_scores(R)
    return sum(R[j][j] for j in range(len(R))) / len(R)


def acc_curve(R) -> list[float]:
    """``[mean(R[k][0..k]) for k in 0..T-1]``: the average over the tasks seen so far, after each session."""
    R, _ = validate_scores(R)
    return [sum(R[k][: k + 1]) / (k + 1) for k in range(len(R))]


def backward_transfer(R, *, higher_is_better: bool = True) -> float | None:
    """BWT = 1/(T-1) · Σ_{j<T-1} (R[T-1][j] − R[j][j]); ``None`` when T = 1.

    Positive: later sessions improved earlier tasks; negative: they hurt them
    (with ``higher_is_better=False`` the differences are negated first, so the
    sign keeps that meaning).
    """
    R, _ = _prep(R, None, higher_is_better)
    T = len(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R, baseline, *, higher_is_better: bool = True) -> float | None:
    """FWT = 1/(T-1) · Σ_{j≥1} (R[j-1][j] − b[j]); ``None`` when T = 1 or without a baseline.

    How much training on tasks 0..j-1 helped task j *before* its own session,
    compared with the untrained model's score ``b[j]``.
    """
    if baseline is None:
        R, _ = validate_scores(R)
        return None
    R, b = _prep(R, baseline, higher_is_better)
    T = len(R)
    if T < 2:
        return None
    return sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)


def forgetting_per_task(R, *, higher_is_better: bool = True) -> list[float] | None:
    """``[f_0, …, f_{T-2}]`` with f_j = max_{l≤T-2} R[l][j] − R[T-1][j]; ``None`` when T = 1.

    The largest drop of task j from its best score before the last session to
    its score after the last session (Chaudhry et al. 2018). It is kept signed,
    as in the paper: if the last session lifted task j above every earlier
    score (the max runs over l ≤ T-2 only), f_j < 0, a gain.
    """
    R, _ = _prep(R, None, higher_is_better)
    T = len(R)
    if T < 2:
        return None
    return [max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)]


def forgetting(R, *, higher_is_better: bool = True) -> float | None:
    """Forgetting = 1/(T-1) · Σ_{j<T-1} f_j (mean of :func:`forgetting_per_task`); ``None`` when T = 1."""
    f = forgetting_per_task(R, higher_is_better=higher_is_better)
    return None if f is None else sum(f) / len(f)


def worst_forgetting(R, *, higher_is_better: bool = True) -> float | None:
    """max_{j<T-1} f_j: the worst drop on an earlier task; ``None`` when T = 1."""
    f = forgetting_per_task(R, higher_is_better=higher_is_better)
    return None if f is None else max(f)


def continual_metrics(R, baseline=None, *, higher_is_better: bool = True,
                      task_names: Sequence[str] | None = None) -> dict:
    """All metrics in one dict (JSON-ready; undefined ones are ``None``).

    Keys: ``T``, ``tasks``, ``higher_is_better``, ``overall_performance`` (ACC),
    ``learning_accuracy``, ``acc_curve``, ``backward_transfer`` (BWT),
    ``forward_transfer`` (FWT), ``forgetting``, ``worst_forgetting``,
    ``worst_forgetting_task``, ``forgetting_per_task``, ``scores`` and ``baseline``
    (the validated inputs).

    For ``higher_is_better=False`` ACC, LA and the ACC curve stay in the scores'
    units, while BWT, FWT and forgetting are computed on the negated scores (see
    the module docstring).
    """
    Rv, b = validate_scores(R, baseline)
    T = len(Rv)
    if task_names is None:
        names = [f"task{j}" for j in range(T)]
    else:
        names = [str(n) for n in task_names]
        if len(names) != T:
            raise MetricsError(f"{len(names)} task names for T = {T} tasks")
        if len(set(names)) != T:
            raise MetricsError("task names must be distinct")
    f = forgetting_per_task(Rv, higher_is_better=higher_is_better)
    worst_j = None if f is None else max(range(len(f)), key=lambda j: f[j])
    return {
        "T": T,
        "tasks": names,
        "higher_is_better": higher_is_better,
        "overall_performance": overall_performance(Rv),
        "learning_accuracy": learning_accuracy(Rv),
        "acc_curve": acc_curve(Rv),
        "backward_transfer": backward_transfer(Rv, higher_is_better=higher_is_better),
        "forward_transfer": forward_transfer(Rv, b, higher_is_better=higher_is_better),
        "forgetting": None if f is None else sum(f) / len(f),
        "worst_forgetting": None if f is None else f[worst_j],
        "worst_forgetting_task": None if f is None else names[worst_j],
        "forgetting_per_task": None if f is None else dict(zip(names[: T - 1], f)),
        "scores": Rv,
        "baseline": b,
    }


# --------------------------------------------------------------------------- perplexity

def perplexity(nll_sum, n_tokens) -> float:
    """exp(nll_sum / n_tokens): perplexity from a summed negative log-likelihood (nats).

    ``nll_sum`` and ``n_tokens`` may also be sequences (one entry per document
    or window); they are summed first, so documents are weighted by their
    token counts (the corpus perplexity, not a mean of per-document ones).
    """
    if isinstance(nll_sum, (list, tuple)) or isinstance(n_tokens, (list, tuple)):
        if not (isinstance(nll_sum, (list, tuple)) and isinstance(n_tokens, (list, tuple))):
            raise MetricsError("nll_sum and n_tokens must both be numbers or both be lists")
        if len(nll_sum) != len(n_tokens):
            raise MetricsError(f"{len(nll_sum)} NLL sums for {len(n_tokens)} token counts")
        nll = sum(_number(x, f"nll_sum[{i}]") for i, x in enumerate(nll_sum))
        counts = [n for n in n_tokens]
        for i, n in enumerate(counts):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise MetricsError(f"n_tokens[{i}] must be a non-negative integer, got {n!r}")
        n = sum(counts)
    else:
        nll = _number(nll_sum, "nll_sum")
        n = n_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise MetricsError(f"n_tokens must be a non-negative integer, got {n!r}")
    if n == 0:
        raise MetricsError("perplexity of zero tokens is undefined")
    if nll < 0:
        raise MetricsError(f"a summed negative log-likelihood cannot be negative ({nll})")
    try:
        return math.exp(nll / n)
    except OverflowError:
        return math.inf


def perplexity_from_logprobs(logprobs) -> float:
    """exp(−mean(logprobs)) from per-token log-probabilities (natural log, each ≤ 0)."""
    vals = [_number(x, f"logprob[{i}]") for i, x in enumerate(logprobs)]
    if not vals:
        raise MetricsError("perplexity of zero tokens is undefined")
    for i, v in enumerate(vals):
        if v > 1e-6:
            raise MetricsError(f"logprob[{i}] = {v} is positive: not a log-probability")
    return perplexity(max(0.0, -sum(vals)), len(vals))


def relative_change(before, after) -> float:
    """(after − before) / before, e.g. +0.099 for a held-out perplexity 266.7 → 293.2."""
    b = _number(before, "before")
    a = _number(after, "after")
    if b == 0:
        raise MetricsError("relative change from 0 is undefined")
    return (a - b) / b
