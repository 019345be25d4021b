"""Task-vector arithmetic, one tensor at a time; the math runs in Rust.

Per tensor (torch CPU tensors, contiguous; nothing is copied silently except
the documented dtype conversions of deltas):

- :func:`delta_of` ``(live, base) -> δ``: float64 for float32 weights, float32
  for bfloat16/float16 weights, exact (see :func:`roundtrip_report`).
- :func:`add_delta_` ``(w, δ, scale)``: ``w += scale·δ`` in place, in float64
  (float32 weights) or float32 (16-bit weights), rounded once.
- :func:`task_arithmetic` and :func:`ties`: the merged delta (not base + delta).

Files (streaming: one tensor of each input in memory at a time):

- :func:`merge_files` writes ``base + merged delta`` in the base's dtypes.
- :func:`diff_files` returns per-tensor norms and cosines of two task vectors.

See docs/task-vectors.md for the exact semantics and how they compare to
mergekit 0.1.5 and the TIES paper.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import namedtuple
from pathlib import Path
from typing import Sequence

import torch

from .. import _plasticity as _P
from .files import FLOAT_DTYPES, SafetensorsFile, SafetensorsWriter, TaskVectorError

# TIES paper's recommended k = 20% (mergekit's own default density is 1.0 = no trim).
DEFAULT_TIES_DENSITY = 0.2
METHODS = ("ties", "task_arithmetic")
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}

RoundTrip = namedtuple("RoundTrip", "elements not_exact signed_zero")
Trim = namedtuple("Trim", "kept threshold tied tied_kept")

_WIDE = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}


def _call(fn, *args):
    try:
        return fn(*args)
    except (ValueError, TypeError) as e:
        raise TaskVectorError(str(e)) from None


def _finite(what: str, x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise TaskVectorError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(x):
        raise TaskVectorError(f"{what} must be finite, got {x}")
    return x


def _tensor(what: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TaskVectorError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    return t


# ---------------------------------------------------------------- per tensor

def delta_of(live: torch.Tensor, base: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``live − base`` as a new tensor.

    Default dtype: float64 for float32 weights, float32 for bfloat16/float16
    weights: then ``add_delta_(base.clone(), δ)`` gives ``live`` back bit for
    bit (:func:`roundtrip_report` says where it cannot). ``dtype=torch.float32``
    for float32 weights gives the rounded float32 difference (what mergekit uses).
    """
    live, base = _tensor("live", live), _tensor("base", base)
    if live.dtype not in _WIDE:
        raise TaskVectorError(f"live: weights must be float32, bfloat16 or float16, got {live.dtype}")
    dtype = dtype or _WIDE[live.dtype]
    if dtype not in (torch.float32, torch.float64):
        raise TaskVectorError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    out = torch.empty(live.shape, dtype=dtype)
    _call(_P.tv_delta_of, live, base, out)
    return out


def add_delta_(w: torch.Tensor, delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``w += scale·delta`` in place (float64 math for float32 weights, float32
    for 16-bit), one rounding; returns ``w``. ``delta`` must be float32 or
    float64; a bfloat16/float16 delta is widened to float32 first (exact).
    Nothing is written if the scale or a delta is not finite or a weight would
    overflow."""
    w, delta = _tensor("weight", w), _tensor("delta", delta)
    scale = _finite("scale", scale)
    if delta.dtype in (torch.bfloat16, torch.float16):
        delta = delta.float()
    _call(_P.tv_add_delta_, w, delta, scale)
    return w


def roundtrip_report(live: torch.Tensor, base: torch.Tensor) -> RoundTrip:
    """How many elements of ``base + (live − base) == live`` and ``live − δ ==
    base`` fail bit for bit: ``RoundTrip(elements, not_exact, signed_zero)``.
    ``not_exact == 0`` means an exact rollback is guaranteed; ``signed_zero``
    counts failures that are only a −0.0 coming back as +0.0."""
    return RoundTrip(*_call(_P.tv_roundtrip, _tensor("live", live), _tensor("base", base)))


def _prep_deltas(deltas, weights) -> tuple[list[torch.Tensor], list[float], torch.dtype]:
    if isinstance(deltas, torch.Tensor) or not isinstance(deltas, Sequence):
        raise TaskVectorError("deltas must be a list of tensors")
    if not deltas:
        raise TaskVectorError("no task vectors to merge")
    ds = [_tensor(f"deltas[{i}]", d) for i, d in enumerate(deltas)]
    for i, d in enumerate(ds):
        if d.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise TaskVectorError(f"deltas[{i}]: expected a float tensor, got {d.dtype}")
        if d.shape != ds[0].shape:
            raise TaskVectorError(f"deltas[{i}] has shape {list(d.shape)}, deltas[0] has {list(ds[0].shape)}")
    dt = torch.float64 if any(d.dtype == torch.float64 for d in ds) else torch.float32
    ds = [d if d.dtype == dt else d.to(dt) for d in ds]
    if weights is None:
        weights = [1.0] * len(ds)
    weights = [_finite(f"weight {i}", w) for i, w in enumerate(weights)]
    if len(weights) != len(ds):
        raise TaskVectorError(f"{len(weights)} weights for {len(ds)} task vectors")
    return ds, weights, dt


def task_arithmetic(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                    lam: float = 1.0, *, normalize: bool = False) -> torch.Tensor:
    """Merged delta ``lam · Σ wᵢ·δᵢ`` (``/ Σ wᵢ`` with ``normalize``), as a new
    float32 tensor (float64 if any delta is float64). Negate with w = −1, scale
    with w or lam; mergekit 0.1.5 ``task_arithmetic`` semantics and order."""
    ds, ws, dt = _prep_deltas(deltas, weights)
    lam = _finite("lambda", lam)
    out = torch.empty(ds[0].shape, dtype=dt)
    _call(_P.tv_task_arithmetic, ds, ws, lam, bool(normalize), out)
    return out


def _densities(density, n: int) -> list[float]:
    ds = list(density) if isinstance(density, (list, tuple)) else [density] * n
    if len(ds) != n:
        raise TaskVectorError(f"{len(ds)} densities for {n} task vectors")
    out = []
    for d in ds:
        try:
            d = float(d)
        except (TypeError, ValueError):
            raise TaskVectorError(f"density must be a number in (0, 1], got {d!r}") from None
        if not (0.0 < d <= 1.0):  # also refuses NaN
            raise TaskVectorError(f"density must be in (0, 1], got {d}")
        out.append(d)
    return out


def ties(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
         density: float | Sequence[float] = DEFAULT_TIES_DENSITY, lam: float = 1.0,
         normalize: bool = True, *, return_trims: bool = False):
    """TIES-merged delta of one tensor (mergekit 0.1.5 per-tensor semantics):
    keep the ``max(1, int(density·n))`` largest |δᵢ| of each input (lowest
    index first among equal magnitudes at the cut), weight, elect the sign of
    ``Σ wᵢδ̂ᵢ`` (+1 on 0), sum the agreeing ``wᵢδ̂ᵢ`` (÷ their weights with
    ``normalize``), × lam. ``density``: one value or one per input, in (0, 1].
    Returns a float32 tensor (float64 if any delta is float64), and with
    ``return_trims`` also a list of :class:`Trim` per input."""
    ds, ws, dt = _prep_deltas(deltas, weights)
    dens = _densities(density, len(ds))
    lam = _finite("lambda", lam)
    out = torch.empty(ds[0].shape, dtype=dt)
    trims = _call(_P.tv_ties, ds, ws, dens, lam, bool(normalize), out)
    return (out, [Trim(*t) for t in trims]) if return_trims else out


def pair_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """``(‖a‖, ‖b‖, a·b)`` accumulated in float64."""
    sa, sb, d = _call(_P.tv_pair_stats, _tensor("a", a), _tensor("b", b))
    return math.sqrt(sa), math.sqrt(sb), d


# ---------------------------------------------------------------- files

def _open(path, role: str) -> SafetensorsFile:
    p = Path(path)
    if not p.is_file():
        raise TaskVectorError(f"{role} {p}: no such file")
    return SafetensorsFile(p)


def _same_model(base: SafetensorsFile, other: SafetensorsFile, *, same_dtype: bool) -> None:
    """Names and shapes (and, for full models, dtypes) of ``other`` must match ``base``."""
    a, b = set(base.tensors), set(other.tensors)
    if a != b:
        missing, extra = sorted(a - b), sorted(b - a)
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors of the base are missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} tensors are not in the base (e.g. {extra[0]!r})")
        raise TaskVectorError(f"{other.path} is not from the same model as {base.path}: " + "; ".join(parts))
    for name, bi in base.tensors.items():
        oi = other.tensors[name]
        if oi.shape != bi.shape:
            raise TaskVectorError(
                f"{other.path} is not from the same model as {base.path}: tensor {name!r} has shape "
                f"{list(oi.shape)}, the base has {list(bi.shape)}")
        if oi.dtype not in FLOAT_DTYPES:
            raise TaskVectorError(f"{other.path}: tensor {name!r} has dtype {oi.dtype}; only float tensors can be merged")
        if same_dtype and oi.dtype != bi.dtype:
            raise TaskVectorError(
                f"{other.path}: tensor {name!r} is {oi.dtype} but the base has {bi.dtype}; "
                "fine-tuned inputs must have the base's dtypes (or pass task vectors with --inputs-are-deltas)")


def _check_out(out_path, inputs: list[Path]) -> Path:
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise TaskVectorError(f"output {out}: must end in .safetensors")
    if not out.parent.is_dir():
        raise TaskVectorError(f"output {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise TaskVectorError(f"output {out}: is a directory")
    for p in inputs:
        if out.resolve() == p.resolve() or (out.exists() and os.path.samefile(out, p)):
            raise TaskVectorError(f"output {out} is also an input; write the merge to a new file")
    return out


def merge_files(method: str, base_path, input_paths: Sequence, out_path, *,
                density: float | Sequence[float] | None = None, weights: Sequence[float] | None = None,
                lam: float = 1.0, inputs_are_deltas: bool = False, normalize: bool | None = None,
                precision: str = "float32", variant: str = "mergekit",
                metadata: dict[str, str] | None = None) -> dict:
    """Merge fine-tuned models (or task vectors) into ``base`` and write
    ``base + merged delta`` to ``out_path`` in the base's dtypes, streaming.

    ``method``: ``"ties"`` or ``"task_arithmetic"``. ``density`` (ties only;
    default 0.2), ``weights`` (one per input, default 1), ``lam`` (λ),
    ``normalize`` (default True for ties, False for task arithmetic, as in
    mergekit). ``inputs_are_deltas``: the inputs are task vectors (any float
    dtype, same names/shapes as the base) instead of fine-tuned models (same
    names, shapes and dtypes as the base). ``precision``: dtype of the deltas
    and the merge math; ``"float32"`` (default) is mergekit's arithmetic.
    ``variant`` (ties only): ``"mergekit"`` (per-tensor trim, default) or
    ``"paper"`` (the TIES paper's code: one trim threshold over the whole model
    per input keeping ``int(N·density) + 1`` values plus ties, unweighted-count
    disjoint mean, zero sums take the model-wide majority sign; weights, if
    given, scale each task vector first). The paper variant reads the inputs
    4 times (float32; 6 for float64): 2 (4) passes for the exact model-wide
    threshold, one for the majority sign, one to write.

    Everything is validated before the output is created; the output appears
    atomically (temporary file + fsync + rename) or not at all. Holds at most
    one tensor of the base and of each input, one delta per input and one
    merged tensor in memory. Returns a summary dict.
    """
    if method not in METHODS:
        raise TaskVectorError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if precision not in PRECISIONS:
        raise TaskVectorError(f"precision must be float32 or float64, got {precision!r}")
    pdt = PRECISIONS[precision]
    inputs = [Path(p) for p in input_paths]
    if not inputs:
        raise TaskVectorError("no inputs to merge")
    n = len(inputs)
    if variant not in ("mergekit", "paper"):
        raise TaskVectorError(f"variant must be 'mergekit' or 'paper', got {variant!r}")
    if method == "ties":
        dens = _densities(DEFAULT_TIES_DENSITY if density is None else density, n)
        if variant == "paper":
            if normalize is not None:
                raise TaskVectorError("the paper variant always takes the disjoint mean; do not set normalize")
            if len(set(dens)) != 1:
                raise TaskVectorError("the paper variant takes one density for all inputs")
        normalize = True if normalize is None else bool(normalize)
    else:
        if variant != "mergekit":
            raise TaskVectorError("variant applies to --method ties only")
        if density is not None:
            raise TaskVectorError("density applies to --method ties only (task arithmetic does not trim)")
        dens = None
        normalize = False if normalize is None else bool(normalize)
    ws = [1.0] * n if weights is None else [_finite(f"weight {i}", w) for i, w in enumerate(weights)]
    if len(ws) != n:
        raise TaskVectorError(f"{len(ws)} weights for {n} inputs")
    lam = _finite("lambda", lam)
    base_path = Path(base_path)
    out = _check_out(out_path, [base_path, *inputs])

    base = _open(base_path, "base")
    files = [_open(p, "input") for p in inputs]
    try:
        for name, bi in base.tensors.items():
            if bi.dtype not in ("F32", "BF16", "F16"):
                raise TaskVectorError(
                    f"{base.path}: tensor {name!r} has dtype {bi.dtype}; the base must hold float32, bfloat16 "
                    "or float16 weights")
        for f in files:
            _same_model(base, f, same_dtype=not inputs_are_deltas)
        meta = dict(base.metadata)
        meta.setdefault("format", "pt")
        meta["plasticity.merge"] = json.dumps({
            "method": method, "density": dens, "weights": ws, "lambda": lam, "normalize": normalize,
            "inputs_are_deltas": bool(inputs_are_deltas), "precision": precision, "variant": variant,
            "base": base_path.name, "inputs": [p.name for p in inputs]})
        if metadata:
            meta.update(metadata)
        specs = [(name, bi.dtype, bi.shape) for name, bi in base.tensors.items()]
        stats = {"tensors": 0, "straddling_ties": 0}

        def deltas_of(name: str, b: torch.Tensor) -> list[torch.Tensor]:
            ds = []
            for f in files:
                x = f.get(name)
                if inputs_are_deltas:
                    d = x if x.dtype == pdt else x.to(pdt)
                else:
                    d = torch.empty(x.shape, dtype=pdt)
                    _call(_P.tv_delta_of, x, b, d)
                del x
                ds.append(d)
            return ds

        paper = None
        if method == "ties" and variant == "paper":
            paper = _paper_plan(base, deltas_of, ws, dens[0], pdt)
            stats.update(paper_thresholds=paper[0], paper_majority=paper[1])
        with SafetensorsWriter(out, specs, meta) as w:
            for name in base.names:
                b = base.get(name)
                deltas = deltas_of(name, b)
                merged = torch.empty(b.shape, dtype=pdt)
                try:
                    if paper is not None:
                        _P.tv_ties_paper(deltas, ws, paper[0], paper[1], lam, merged)
                    elif method == "ties":
                        trims = _P.tv_ties(deltas, ws, dens, lam, normalize, merged)
                        stats["straddling_ties"] += sum(1 for t in trims if t[3] < t[2] and t[1] > 0)
                    else:
                        _P.tv_task_arithmetic(deltas, ws, lam, normalize, merged)
                    del deltas
                    _P.tv_add_delta_(b, merged, 1.0)
                except (ValueError, TypeError) as e:
                    raise TaskVectorError(f"tensor {name!r}: {e}") from None
                del merged
                w.write(name, b)
                del b
                stats["tensors"] += 1
    finally:
        base.close()
        for f in files:
            f.close()
    return {"output": str(out), "method": method, "density": dens, "weights": ws, "lambda": lam,
            "normalize": normalize, "precision": precision, **stats}


def _paper_plan(base: SafetensorsFile, deltas_of, ws: list[float], density: float, pdt) -> tuple[list[float], int]:
    """Model-wide trim thresholds (one per input) and the majority sign, streamed."""
    total = sum(i.numel for i in base.tensors.values())
    if total == 0:
        return [0.0] * len(ws), 1
    k = _P.tv_paper_keep_count(total, density)
    sels = [_P.TvGlobalSelect(k, pdt == torch.float64) for _ in ws]
    try:
        while not sels[0].done:
            for name in base.names:
                for s, d in zip(sels, deltas_of(name, base.get(name))):
                    s.observe(d)
            for s in sels:
                s.end_pass()
        thr = [s.threshold for s in sels]
        votes = 0
        for name in base.names:
            votes += _P.tv_paper_sign_sum(deltas_of(name, base.get(name)), ws, thr)
    except (ValueError, TypeError) as e:
        raise TaskVectorError(f"paper TIES: {e}") from None
    return thr, (votes > 0) - (votes < 0)


def write_delta_file(live_path, base_path, out_path, *, precision: str | None = None) -> dict:
    """Write the task vector ``live − base`` of two model files, streaming.
    Default precision: exact (float64 for float32 weights, float32 for 16-bit)."""
    if precision is not None and precision not in PRECISIONS:
        raise TaskVectorError(f"precision must be float32 or float64, got {precision!r}")
    live_path, base_path = Path(live_path), Path(base_path)
    out = _check_out(out_path, [live_path, base_path])
    base, live = _open(base_path, "base"), _open(live_path, "model")
    try:
        for name, bi in base.tensors.items():
            if bi.dtype not in ("F32", "BF16", "F16"):
                raise TaskVectorError(f"{base.path}: tensor {name!r} has dtype {bi.dtype}; only float weights")
        _same_model(base, live, same_dtype=True)

        def dt(bi):
            return PRECISIONS[precision] if precision else _WIDE[bi.torch_dtype]

        specs = [(name, dt(bi), bi.shape) for name, bi in base.tensors.items()]
        meta = {"format": "pt", "plasticity.task_vector": json.dumps(
            {"base": base_path.name, "model": live_path.name, "precision": precision or "exact"})}
        with SafetensorsWriter(out, specs, meta) as w:
            for name, bi in base.tensors.items():
                d = torch.empty(bi.shape, dtype=dt(bi))
                _call(_P.tv_delta_of, live.get(name), base.get(name), d)
                w.write(name, d)
    finally:
        base.close()
        live.close()
    return {"output": str(out), "tensors": len(specs)}


_LAYER = re.compile(r"^(.*?\blayers\.\d+)\.")


def diff_files(a_path, b_path, *, base_path=None, per_layer: bool = False) -> list[dict]:
    """Per-tensor (or per-layer) ``‖a‖``, ``‖b‖``, cosine and ``‖a − b‖`` of two
    task vectors, plus a final ``"TOTAL"`` row over the whole model. With
    ``base_path``, ``a`` and ``b`` are fine-tuned models and their task vectors
    are taken against that base, one tensor at a time."""
    a, b = _open(a_path, "a"), _open(b_path, "b")
    base = _open(base_path, "base") if base_path is not None else None
    try:
        ref = base or a
        for f in (a, b):
            if f is not ref:
                _same_model(ref, f, same_dtype=base is not None)
        if base is None:
            for name, ai in a.tensors.items():
                if ai.dtype not in FLOAT_DTYPES:
                    raise TaskVectorError(f"{a.path}: tensor {name!r} has dtype {ai.dtype}; only float tensors")
        groups: dict[str, dict] = {}
        for name in ref.names:
            x, y = a.get(name), b.get(name)
            if base is not None:
                bt = base.get(name)
                x, y = delta_of(x, bt), delta_of(y, bt)
            sa, sb, d = _call(_P.tv_pair_stats, x, y)
            key = name
            if per_layer:
                m = _LAYER.match(name)
                key = m.group(1) if m else name
            g = groups.setdefault(key, {"name": key, "numel": 0, "sq_a": 0.0, "sq_b": 0.0, "dot": 0.0,
                                        "shape": list(x.shape) if not per_layer else None})
            g["numel"] += x.numel()
            g["sq_a"] += sa
            g["sq_b"] += sb
            g["dot"] += d
    finally:
        for f in (a, b, base):
            if f is not None:
                f.close()
    rows = list(groups.values())
    total = {"name": "TOTAL", "numel": sum(r["numel"] for r in rows), "shape": None,
             "sq_a": sum(r["sq_a"] for r in rows), "sq_b": sum(r["sq_b"] for r in rows),
             "dot": sum(r["dot"] for r in rows)}
    out = []
    for r in [*rows, total]:
        na, nb = math.sqrt(r["sq_a"]), math.sqrt(r["sq_b"])
        cos = r["dot"] / (na * nb) if na > 0 and nb > 0 else None
        out.append({"name": r["name"], "shape": r["shape"], "numel": r["numel"], "norm_a": na, "norm_b": nb,
                    "dot": r["dot"], "cosine": cos,
                    "norm_diff": math.sqrt(max(r["sq_a"] + r["sq_b"] - 2 * r["dot"], 0.0))})
    return out
