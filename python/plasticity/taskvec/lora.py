"""A task vector as a PEFT LoRA adapter: the truncated SVD of each trained matrix's delta.

For every 2-D projection weight ``W`` (``out × in``) with delta Δ, the Rust core
(:func:`plasticity._plasticity.lowrank_factors`) returns ``lora_B`` (``out × r``) and
``lora_A`` (``r × in``) with ``B·A`` the best rank-r approximation of Δ. Each matrix has
its own rank, chosen by a fixed ``rank`` or by the ``energy`` (share of ‖Δ‖²_F) it must
keep, capped by ``max_rank``. The adapter is scaled 1 everywhere: ``r`` and ``lora_alpha``
are the largest rank, and ``rank_pattern``/``alpha_pattern`` give every module its own
rank as both (PEFT and vLLM read both), so ``W + B·A`` is what serving adds.

Parameters LoRA cannot carry (norms, biases, embeddings and the tied output head,
anything not 2-D) are left out and listed. Their share of ‖τ‖_F is reported, and an
export whose left-out share exceeds ``max_left_out`` is refused: the adapter would
silently be a different model. Matrices whose delta is exactly zero are left out of the
adapter too (there is nothing to add), listed as ``unchanged``.

Errors are measured, not predicted: per matrix ``‖Δ − B·A‖_F/‖Δ‖_F`` with the float32
factors as stored, and overall over the whole τ (left-out tensors counting in full).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from plasticity._plasticity import lowrank_factors

from .files import SafetensorsFile, SafetensorsWriter, TaskVectorError, read_header
from .snapshot_folder import META_FILE, NAME_RULE, TV_FILE, is_snapshot_name

ADAPTER_CONFIG, ADAPTER_WEIGHTS, REPORT_FILE = "adapter_config.json", "adapter_model.safetensors", "export_report.json"
PEFT_PREFIX = "base_model.model."
DEFAULT_MAX_LEFT_OUT = 0.05
# Modules a LoRA adapter cannot replace here: embeddings and the (often tied) output head.
_NOT_LORA = ("embed_tokens", "lm_head", "wte", "wpe", "embeddings")


class LoraExportError(ValueError):
    """A refused export; ``code`` is the HTTP status a route answers with."""

    def __init__(self, msg: str, code: int = 400):
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class RankChoice:
    """Exactly one of ``rank`` (per matrix, 1..=min(out, in)) or ``energy`` in (0, 1]; ``max_rank`` caps."""

    rank: int | None = None
    energy: float | None = None
    max_rank: int | None = None
    max_left_out: float = DEFAULT_MAX_LEFT_OUT

    def check(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise LoraExportError("give exactly one of rank or energy")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise LoraExportError(f"rank {self.rank!r}: it must be an integer ≥ 1")
        if self.energy is not None and not (isinstance(self.energy, (int, float)) and not isinstance(self.energy, bool)
                                            and 0.0 < self.energy <= 1.0):
            raise LoraExportError(f"energy {self.energy!r}: it must be in (0, 1]")
        if self.max_rank is not None and (isinstance(self.max_rank, bool) or not isinstance(self.max_rank, int)
                                          or self.max_rank < 1):
            raise LoraExportError(f"max_rank {self.max_rank!r}: it must be an integer ≥ 1")
        if not (isinstance(self.max_left_out, (int, float)) and 0.0 <= self.max_left_out <= 1.0):
            raise LoraExportError(f"max_left_out {self.max_left_out!r}: it must be in [0, 1]")

    def as_dict(self) -> dict:
        return {"rank": self.rank, "energy": self.energy, "max_rank": self.max_rank, "max_left_out": self.max_left_out}


def lora_module(name: str, shape: Sequence[int]) -> str | None:
    """The module a LoRA adapter would wrap for parameter ``name``, or None when LoRA cannot carry it."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    if any(part in _NOT_LORA for part in module.split(".")):
        return None
    return module


@dataclass
class Adapter:
    """An adapter in memory: PEFT tensors, its config and the export report."""

    tensors: dict[str, torch.Tensor]
    config: dict
    report: dict


def _bounded_map(fn, items: Sequence, workers: int):
    """``map(fn, items)`` in order on ``workers`` threads, with at most ``2·workers`` results held at once."""
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _floats(raw: bytes, rows: int, cols: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).view(rows, cols)


def build_adapter(shapes: Mapping[str, Sequence[int]], delta: Callable[[str], torch.Tensor], choice: RankChoice,
                  base_model: str = "", workers: int = 2, allow_empty: bool = False) -> Adapter:
    """Factor every LoRA-able delta; ``delta(name)`` gives the float64/float32 CPU delta of ``name``.

    ``workers`` matrices are factored at once, at most ``2·workers`` deltas in memory.
    ``allow_empty``: a delta that is zero everywhere gives a valid adapter that adds nothing
    (one rank-1 zero factor pair) instead of an error; serving a snapshot equal to the live
    weights needs it.
    """
    choice.check()
    t0 = time.time()
    names = sorted(shapes)
    if choice.rank is not None:
        for n in names:
            if lora_module(n, shapes[n]) is not None and choice.rank > min(shapes[n]):
                raise LoraExportError(f"rank {choice.rank} is above min(out, in) = {min(shapes[n])} of {n} "
                                      f"{list(shapes[n])}")
    tensors: dict[str, torch.Tensor] = {}
    modules, left_out, unchanged = [], [], []
    total_sq = residual_sq = lora_sq = lora_residual_sq = 0.0
    ranks: dict[str, int] = {}
    def factor(n: str):
        d = delta(n)
        if tuple(d.shape) != tuple(shapes[n]):
            raise LoraExportError(f"{n}: delta has shape {list(d.shape)}, expected {list(shapes[n])}", 422)
        if lora_module(n, d.shape) is None:
            return tuple(d.shape), d, None
        d = d.detach().cpu()
        if d.dtype not in (torch.float64, torch.float32):
            d = d.double()
        try:  # the core releases the GIL: matrices factor in parallel
            f = lowrank_factors(d.contiguous(), rank=choice.rank, energy=choice.energy, max_rank=choice.max_rank)
        except ValueError as e:
            raise LoraExportError(f"{n}: {e}", 422) from None
        return tuple(d.shape), None, f  # the delta itself is not kept

    for n, (shape, d, f) in zip(names, _bounded_map(factor, names, workers)):
        if f is None:
            norm = float(d.double().norm()) if d.numel() else 0.0
            if not math.isfinite(norm):
                raise LoraExportError(f"{n}: the delta is not finite", 422)
            total_sq += norm * norm
            residual_sq += norm * norm
            if norm > 0:
                left_out.append({"name": n, "shape": list(shape), "norm": norm})
            continue
        module = lora_module(n, shape)
        norm, err = f["norm"], f["rel_error"]
        total_sq += norm * norm
        lora_sq += norm * norm
        residual_sq += (err * norm) ** 2
        lora_residual_sq += (err * norm) ** 2
        if f["rank"] == 0:
            unchanged.append(n)
            continue
        r, (rows, cols) = f["rank"], shape
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = _floats(f["a"], r, cols)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = _floats(f["b"], rows, r)
        ranks[module] = r
        modules.append({"name": n, "module": module, "shape": [rows, cols], "rank": r, "norm": norm,
                        "rel_error": err, "energy_kept": f["energy_kept"]})
    total = math.sqrt(total_sq)
    left_norm = math.sqrt(sum(x["norm"] ** 2 for x in left_out))
    left_share = left_norm / total if total > 0 else 0.0
    if left_share > choice.max_left_out:
        biggest = ", ".join(x["name"] for x in sorted(left_out, key=lambda x: -x["norm"])[:3])
        raise LoraExportError(f"{len(left_out)} tensors LoRA cannot carry hold {left_share:.1%} of the delta's norm "
                              f"(max_left_out {choice.max_left_out:.1%}; largest: {biggest})", 422)
    if not ranks:
        first = next((n for n in names if lora_module(n, shapes[n]) is not None), None)
        if not allow_empty or first is None:
            raise LoraExportError("the delta is zero on every matrix LoRA can carry: there is no adapter to export", 422)
        module, (rows, cols) = lora_module(first, shapes[first]), shapes[first]
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = torch.zeros(1, cols)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = torch.zeros(rows, 1)
        ranks[module] = 1
    top = max(ranks.values())
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": top, "lora_alpha": top, "rank_pattern": ranks, "alpha_pattern": dict(ranks),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
    }
    rank_list = sorted(ranks.values())
    report = {
        "choice": choice.as_dict(), "modules": modules, "left_out": left_out, "unchanged": unchanged,
        "left_out_share": left_share, "norm": total,
        "rel_error": math.sqrt(residual_sq) / total if total > 0 else 0.0,
        "rel_error_lora_modules": math.sqrt(lora_residual_sq / lora_sq) if lora_sq > 0 else 0.0,
        "ranks": {"min": rank_list[0], "max": rank_list[-1], "mean": sum(rank_list) / len(rank_list),
                  "modules": len(rank_list)},
        "adapter_params": sum(t.numel() for t in tensors.values()),
        "seconds": round(time.time() - t0, 3),
    }
    return Adapter(tensors, config, report)


def write_adapter(adapter: Adapter, out: str | os.PathLike, extra_report: Mapping | None = None) -> Path:
    """Write the adapter folder atomically (temporary folder, fsync, rename); refuse an existing ``out``."""
    out = Path(out)
    if out.exists():
        raise LoraExportError(f"{out} exists; choose a new folder", 409)
    if not out.parent.is_dir():
        raise LoraExportError(f"{out.parent} is not a directory")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        names = sorted(adapter.tensors)
        with SafetensorsWriter(tmp / ADAPTER_WEIGHTS, [(n, torch.float32, adapter.tensors[n].shape) for n in names],
                               {"format": "pt"}) as w:
            for n in names:
                w.write(n, adapter.tensors[n])
        for fname, obj in ((ADAPTER_CONFIG, adapter.config), (REPORT_FILE, {**adapter.report, **(extra_report or {})})):
            with open(tmp / fname, "w", encoding="utf-8") as fh:
                json.dump(obj, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def merged_delta(adapter_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``B·A`` per HF parameter name, in float64, read back from an adapter folder (for checks)."""
    d = Path(adapter_dir)
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    out = {}
    with SafetensorsFile(d / ADAPTER_WEIGHTS) as f:
        for n in f.names:
            if not n.endswith(".lora_A.weight"):
                continue
            module = n[len(PEFT_PREFIX): -len(".lora_A.weight")]
            a = f.get(n).double()
            b = f.get(f"{PEFT_PREFIX}{module}.lora_B.weight").double()
            rank = cfg.get("rank_pattern", {}).get(module, cfg["r"])
            alpha = cfg.get("alpha_pattern", {}).get(module, cfg["lora_alpha"])
            out[module + ".weight"] = (alpha / rank) * (b @ a)
    return out


def export_snapshot(snapshot_dir: str | os.PathLike, name: str, out: str | os.PathLike, choice: RankChoice,
                    model_dir: str | os.PathLike | None = None) -> dict:
    """Export snapshot ``name`` of ``snapshot_dir`` as an adapter folder at ``out``; returns the report.

    ``model_dir`` (default: the model the snapshot records, when it is a folder here) is the base the
    adapter is for: every tensor of the snapshot must be in its safetensors files with the same shape.
    """
    if not is_snapshot_name(name):
        raise LoraExportError(f"bad snapshot name {name!r}: {NAME_RULE}")
    folder = Path(snapshot_dir) / name
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraExportError(f"unknown snapshot {name!r} in {snapshot_dir}", 404) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LoraExportError(f"snapshot {name!r}: unreadable {META_FILE} ({e})", 422) from None
    if not isinstance(meta, dict):
        raise LoraExportError(f"snapshot {name!r}: {META_FILE} is not a JSON object", 422)
    recorded = meta.get("model") if isinstance(meta.get("model"), str) else ""
    model = Path(model_dir) if model_dir is not None else (Path(recorded) if recorded and Path(recorded).is_dir() else None)
    try:
        f = SafetensorsFile(folder / TV_FILE)
    except (TaskVectorError, OSError) as e:
        raise LoraExportError(f"snapshot {name!r}: {e}", 422) from None
    with f:
        shapes = {n: tuple(info.shape) for n, info in f.tensors.items()}
        if model is not None:
            _check_model(name, shapes, model)
        adapter = build_adapter(shapes, f.get, choice, base_model=str(model) if model is not None else recorded)
    write_adapter(adapter, out, {"snapshot": name, "snapshot_norm": meta.get("norm"),
                                 "model": str(model) if model is not None else recorded,
                                 "model_fingerprint": meta.get("model_fingerprint")})
    return {**adapter.report, "snapshot": name, "out": str(out)}


def _check_model(name: str, shapes: Mapping[str, tuple], model: Path) -> None:
    """Every snapshot tensor must exist in ``model``'s safetensors files with the same shape."""
    have: dict[str, tuple] = {}
    files = sorted(model.glob("*.safetensors")) if model.is_dir() else []
    if not files:
        raise LoraExportError(f"--model {model}: no .safetensors files there")
    for p in files:
        try:
            _, infos = read_header(p)
        except TaskVectorError as e:
            raise LoraExportError(f"--model {model}: {e}", 422) from None
        for info in infos:
            have.setdefault(info.name, tuple(info.shape))
    for n, shape in shapes.items():
        if n not in have:
            raise LoraExportError(f"snapshot {name!r} is from another model: {n} is not in {model}", 409)
        if have[n] != shape:
            raise LoraExportError(f"snapshot {name!r} is from another model: {n} is {list(shape)} there, "
                                  f"{list(have[n])} in {model}", 409)
