"""Task vectors of the live model: named snapshots, rollback, composition, the forgetting guard.

A snapshot is the task vector ``τ = W_live − W_base`` of every trainable tensor,
under the transformers (HF) parameter names, in ``<snapshot_dir>/<name>/``:

- ``task_vector.safetensors``: δ in float64 for float32 weights, float32 for
  bf16/f16 weights (wide enough that ``base + τ`` gives the live tensor back bit
  for bit; ``meta.json["not_exact"]`` counts elements where it cannot);
- ``meta.json``: what produced it (steps, examples, lr, Apollo settings, held-out
  perplexity, parent snapshot, model fingerprint).

Both are written into a hidden temporary folder that is fsync'd and renamed into
place: a crash mid-write leaves every earlier snapshot intact (names are
immutable: saving over an existing name is refused).

The base is kept exactly without a copy in memory: the trainable tensors are
read back from the model's safetensors files and checked bit for bit against
the live weights before anything is trained (:class:`BaseWeights`); a tensor
that does not match (a transformed checkpoint) is copied into memory instead,
and the status says how many bytes that costs.

Everything that changes the live weights runs on the training thread between
steps (``Trainer.call``), one tensor at a time, each tensor written under the
serving lock, so a forward sees each tensor either before or after the change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

from plasticity.numbers import NumberError, parse_float
from plasticity.taskvec.files import SafetensorsFile, SafetensorsWriter, TaskVectorError
from plasticity.taskvec.merge import add_delta_, delta_of, roundtrip_report, task_arithmetic, ties
from plasticity.taskvec.snapshot_folder import META_FILE, NAME_RULE, TV_FILE, is_snapshot_name
from plasticity.training.durable import fsync_dir, write_json

log = logging.getLogger("vllm.plasticity.training")

DEFAULT_MAX_NORM_GROWTH = 2.0
MAX_EVAL_BYTES, MAX_EVALS = 64 << 10, 64  # eval reports kept in meta.json
SERVED_DIR = ".served"  # <snapshot_dir>/.served/<name>-<version>: adapters loaded into vLLM
_KEEP_BYTES = 512 << 20  # planned tensors kept between the check and the write; beyond: recomputed
# delta dtype per weight dtype: wide enough for an exact base + τ round trip
_WIDE = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}


class SnapshotError(ValueError):
    """A refused request; ``code`` is the HTTP status the API answers with."""

    def __init__(self, msg: str, code: int = 400):
        super().__init__(msg)
        self.code = code


def fingerprint(model, shapes: dict | None = None) -> str:
    """Identity of an architecture instance: model type + every parameter name and shape
    (``shapes``: the whole model's, when ``model`` holds one tensor-parallel rank's blocks)."""
    h = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode())
    if shapes is None:
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for n in sorted(shapes):
        h.update(f"\0{n}:{list(shapes[n])}".encode())
    return h.hexdigest()[:32]


class BaseWeights:
    """Exact pre-training values of the trainable tensors (see module docstring)."""

    def __init__(self, model_dir: str | os.PathLike, params: dict[str, torch.Tensor]):
        t0 = time.time()
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        self.memory: dict[str, torch.Tensor] = {}
        index = {}
        d = Path(model_dir)
        for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            try:
                sf = SafetensorsFile(f)
            except TaskVectorError as e:
                log.warning("plasticity: base weights: %s", e)
                continue
            self.files[str(f)] = sf
            for n in sf.names:
                index.setdefault(n, str(f))
        for n, live in params.items():
            f = index.get(n)
            if f is not None:
                t = self.files[f].get(n)
                if t.shape == live.shape and torch.equal(t.to(live.dtype), live.detach()):
                    self.where[n] = f
                    continue
            self.memory[n] = live.detach().clone()  # not reproducible from the files: keep it
        self.verify_seconds = time.time() - t0
        log.info("plasticity: base weights: %d tensors from the model files, %d copied (%d bytes), %.1f s",
                 len(self.where), len(self.memory), self.memory_bytes, self.verify_seconds)

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.memory.values())

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if name in self.memory:
            return self.memory[name].clone()
        return self.files[self.where[name]].get(name).to(like.dtype).contiguous()

    def info(self) -> dict:
        return {"from_files": len(self.where), "in_memory": len(self.memory), "memory_bytes": self.memory_bytes,
                "verify_seconds": round(self.verify_seconds, 3)}


class Snapshots:
    """The snapshot folder plus the live operations on one worker's trainable tensors."""

    def __init__(self, root: str | os.PathLike, params: dict[str, torch.Tensor], base: BaseWeights,
                 lock, fp: str, model_path: str = "", *, writer: bool = True, barrier=None):
        """``params``: the trainable tensors by name, whole (under tensor parallelism, each a
        ``tensor_parallel.WholeParam``). Under TP every rank runs every operation (their reads
        gather), one ``writer`` writes the folder, and ``barrier()`` (a collective) makes the others
        wait until it has."""
        self.root = Path(root)
        self.writer, self.barrier = writer, barrier or (lambda: None)
        self.root.mkdir(parents=True, exist_ok=True)
        if writer:
            for stale in self.root.glob(".tmp-*"):  # a crash mid-write: never renamed into place
                shutil.rmtree(stale, ignore_errors=True)
            # adapters served by an earlier run were relative to its live weights: never valid again
            shutil.rmtree(self.root / SERVED_DIR, ignore_errors=True)
        self.params, self.base, self.lock, self.fp, self.model_path = params, base, lock, fp, model_path
        self.max_norm_growth = DEFAULT_MAX_NORM_GROWTH  # an edit may grow no tensor's norm more than this
        self.current: str | None = None  # the snapshot the live weights were last set to / saved as

    # ---- folder ----
    def _dir(self, name: str) -> Path:
        if not is_snapshot_name(name):
            raise SnapshotError(f"bad snapshot name {name!r}: {NAME_RULE}")
        return self.root / name

    def meta(self, name: str) -> dict:
        d = self._dir(name)
        try:
            return json.loads((d / META_FILE).read_text())
        except FileNotFoundError:
            raise SnapshotError(f"unknown snapshot {name!r}", 404) from None
        except ValueError as e:
            raise SnapshotError(f"snapshot {name!r}: unreadable metadata ({e})", 422) from None

    def list(self) -> list[dict]:
        out = []
        for d in sorted(self.root.iterdir()) if self.root.exists() else []:
            if d.is_dir() and not d.name.startswith(".") and (d / META_FILE).exists():
                try:
                    out.append(json.loads((d / META_FILE).read_text()))
                except ValueError:
                    out.append({"name": d.name, "error": "unreadable metadata"})
        return sorted(out, key=lambda m: m.get("created", 0))

    def _open(self, name: str) -> SafetensorsFile:
        """Open a snapshot and check it belongs to this model and this trainable set."""
        meta = self.meta(name)
        if meta.get("model_fingerprint") != self.fp:
            raise SnapshotError(f"snapshot {name!r} is from another model (fingerprint "
                                f"{meta.get('model_fingerprint')!r}, this model {self.fp!r})", 409)
        try:
            f = SafetensorsFile(self._dir(name) / TV_FILE)
        except TaskVectorError as e:
            raise SnapshotError(f"snapshot {name!r}: {e}", 422) from None
        for n, info in f.tensors.items():
            if n not in self.params:
                raise SnapshotError(f"snapshot {name!r} has tensor {n!r}, which is not trainable here", 409)
            if tuple(info.shape) != tuple(self.params[n].shape):
                raise SnapshotError(f"snapshot {name!r}: {n} has shape {list(info.shape)}, the model "
                                    f"{list(self.params[n].shape)}", 409)
        return f

    # ---- save ----
    def save(self, name: str, extra: dict) -> dict:
        try:
            return self._save(name, extra)
        finally:
            self.barrier()  # under TP: the other ranks return once the writer's folder is in place

    def _save(self, name: str, extra: dict) -> dict:
        final = self._dir(name)
        if final.exists():
            raise SnapshotError(f"snapshot {name!r} exists; names are immutable", 409)
        tmp = self.root / f".tmp-{name}-{os.getpid()}-{time.time_ns()}"
        if self.writer:
            tmp.mkdir()
        try:
            names = sorted(self.params)
            wide = {n: _WIDE[self.params[n].dtype] for n in names}
            not_exact = elements = 0
            sq = 0.0
            meta = {"format": "pt", "plasticity": "task_vector", "model_fingerprint": self.fp}
            layout = [(n, wide[n], self.params[n].shape) for n in names]
            with (SafetensorsWriter(tmp / TV_FILE, layout, meta) if self.writer else _NoWriter()) as w:
                for n in names:
                    live = self.params[n].detach()
                    base = self.base.get(n, live)
                    d = delta_of(live, base)
                    rt = roundtrip_report(live, base)
                    not_exact += rt.not_exact
                    elements += rt.elements
                    sq += float(d.double().square().sum())
                    w.write(n, d)
            m = {"name": name, "created": time.time(), "parent": self.current, "model": self.model_path,
                 "model_fingerprint": self.fp, "tensors": len(names), "elements": elements,
                 "delta_dtypes": sorted({str(t).removeprefix("torch.") for t in wide.values()}),
                 "norm": math.sqrt(sq), "not_exact": not_exact, "exact_roundtrip": not_exact == 0, **extra}
            if self.writer:
                write_json(tmp / META_FILE, m)
                fsync_dir(tmp)
                os.rename(tmp, final)
                fsync_dir(self.root)
        except BaseException:
            if self.writer:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.current = name
        return m

    def update_meta(self, name: str, **fields) -> dict:
        try:
            m = {**self.meta(name), **fields}
            if self.writer:
                tmp = self._dir(name) / (META_FILE + ".tmp")
                write_json(tmp, m)
                os.replace(tmp, self._dir(name) / META_FILE)
                fsync_dir(self._dir(name))
            return m
        finally:
            self.barrier()

    def add_eval(self, name: str, report) -> dict:
        """Append an evaluation report to the snapshot's ``evals`` (bounded in size and count)."""
        blob = json.dumps(report, separators=(",", ":"))
        if len(blob) > MAX_EVAL_BYTES:
            raise SnapshotError(f"eval report of {len(blob)} bytes; the limit is {MAX_EVAL_BYTES}", 413)
        evals = self.meta(name).get("evals") or []
        if len(evals) >= MAX_EVALS:
            raise SnapshotError(f"snapshot {name!r} already holds {MAX_EVALS} eval reports", 409)
        return self.update_meta(name, evals=evals + [report])

    # ---- live edits ----
    def _write_live(self, n: str, new: torch.Tensor) -> None:
        with self.lock, torch.no_grad():
            self.params[n].copy_(new)

    def _apply(self, names, compute, what: str, bound_growth: bool = True) -> None:
        """Write ``compute(n)`` into each live tensor ``n`` of ``names``, but only once every result
        has been checked: finite in the weight's dtype and, with ``bound_growth``, its norm at most
        ``max_norm_growth`` × the live tensor's. A refused edit leaves every live byte unchanged."""
        kept, kept_bytes = {}, 0
        for n in names:
            live = self.params[n]
            try:
                new = compute(n).to(live.dtype)
            except TaskVectorError as e:  # a weight would overflow, a non-finite delta, ...
                raise SnapshotError(f"{what}: {n}: {e}; nothing was changed", 422) from None
            if not bool(torch.isfinite(new).all()):
                raise SnapshotError(f"{what}: the result for {n} is not finite (overflow); nothing was changed", 422)
            if bound_growth:
                ref = float(live.detach().double().norm()) or 1.0
                got = float(new.double().norm())
                if not got <= self.max_norm_growth * ref:
                    raise SnapshotError(f"{what}: {n} would grow from norm {ref:.4g} to {got:.4g}, more than "
                                        f"max_edit_norm_growth = {self.max_norm_growth:g}×; nothing was changed",
                                        422)
            if kept_bytes + new.numel() * new.element_size() <= _KEEP_BYTES:
                kept[n] = new
                kept_bytes += new.numel() * new.element_size()
        for n in names:
            self._write_live(n, kept.pop(n) if n in kept else compute(n).to(self.params[n].dtype))

    # ---- a snapshot as a LoRA adapter over the live weights ----
    def lora_from_live(self, name: str, choice, out: Path) -> dict:
        """Write at ``out`` a LoRA adapter that turns the live weights into snapshot ``name``.

        Per tensor the exact delta is (what a rollback to ``name`` would write) − live, in float64,
        factored by the Rust core (:mod:`plasticity.taskvec.lora`). Runs on the training thread
        between steps, so the live weights cannot change while it reads them."""
        from plasticity.taskvec.lora import LoraExportError, build_adapter, write_adapter

        f = self._open(name)

        def delta(n):
            target = self.base.get(n, self.params[n])
            if n in f.tensors:
                add_delta_(target, f.get(n))
            return target.double() - self.params[n].detach().double()

        try:
            adapter = build_adapter({n: tuple(p.shape) for n, p in self.params.items()}, delta, choice,
                                    base_model=self.model_path, allow_empty=True)
            write_adapter(adapter, out, {"snapshot": name, "relative_to": "live weights",
                                         "model_fingerprint": self.fp})
        except LoraExportError as e:
            raise SnapshotError(str(e), e.code) from None
        return adapter.report

    def restore(self, name: str | None) -> dict:
        """Live weights := base (+ τ of ``name``), bit-identical to the state that was saved."""
        f = self._open(name) if name is not None else None

        def compute(n):
            new = self.base.get(n, self.params[n])
            if f is not None and n in f.tensors:
                add_delta_(new, f.get(n))
            return new

        # a saved state may be far from the live one, so no growth bound; but never a NaN
        self._apply(sorted(self.params), compute, f"rollback to {name or 'base'}", bound_growth=False)
        self.current = name
        return {"restored": name or "base"}

    def add(self, name: str, scale) -> dict:
        """Live weights += scale·τ (negate: scale −1)."""
        try:
            scale = parse_float(scale, "scale")
        except NumberError as e:
            raise SnapshotError(str(e)) from None
        f = self._open(name)

        def compute(n):
            new = self.params[n].detach().clone()
            add_delta_(new, f.get(n), scale)
            return new

        self._apply(list(f.names), compute, f"add {name} × {scale:g}")
        self.current = None
        return {"added": name, "scale": scale}

    def merge(self, method: str, names: list[str], weights=None, lam: float = 1.0, density=None,
              normalize: bool | None = None, relative_to: str | None = None) -> dict:
        """Live weights := base + merge(τ_names) (task arithmetic or TIES, mergekit semantics).

        ``relative_to`` (a snapshot R): live := base + τR + merge(τi − τR), i.e. R is the merge's
        base model, as mergekit's ``base_model``. For runs that share a part which is not the
        behaviour (e.g. the same replay data moving an under-trained model the same way), a
        snapshot of that shared part alone keeps it from being counted twice or halved."""
        if method not in ("ties", "task_arithmetic"):
            raise SnapshotError(f"method must be 'ties' or 'task_arithmetic', got {method!r}")
        if not isinstance(names, list) or not names:
            raise SnapshotError("'snapshots' must be a non-empty list of snapshot names")
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(names)):
            raise SnapshotError(f"'weights' must be a list of {len(names)} numbers")
        if density is not None and method != "ties":
            raise SnapshotError("'density' applies to method 'ties' only")
        try:  # one strict number grammar (no booleans, no strings, finite)
            weights = None if weights is None else [parse_float(w, f"weights[{i}]") for i, w in enumerate(weights)]
            lam = parse_float(lam, "lambda")
            density = None if density is None else parse_float(density, "density")
        except NumberError as e:
            raise SnapshotError(str(e)) from None
        if normalize is not None and not isinstance(normalize, bool):
            raise SnapshotError("'normalize' must be true or false")
        normalize = (method == "ties") if normalize is None else bool(normalize)
        kw = {} if density is None else {"density": density}
        probe = [torch.zeros(1)] * len(names)
        try:  # every argument checked by the same code before a single live tensor changes
            ties(probe, weights, lam=lam, normalize=normalize, **kw) if method == "ties" else \
                task_arithmetic(probe, weights, lam, normalize=normalize)
        except TaskVectorError as e:
            raise SnapshotError(str(e)) from None
        if relative_to is not None and (not isinstance(relative_to, str) or relative_to in names):
            raise SnapshotError("'relative_to' must be the name of a snapshot not among 'snapshots'")
        files = [self._open(n) for n in names]
        ref = self._open(relative_to) if relative_to is not None else None

        def get(f, n, shape):
            return f.get(n) if n in f.tensors else torch.zeros(shape, dtype=torch.float32)

        def compute(n):
            live = self.params[n]
            shared = get(ref, n, live.shape) if ref is not None else None
            ds = [get(f, n, live.shape) for f in files]
            if shared is not None:  # in the wider of the two dtypes, so τi − τR is exact for f32 deltas
                wide = torch.promote_types(shared.dtype, ds[0].dtype)
                shared = shared.to(wide)
                ds = [d.to(wide) - shared for d in ds]
            if method == "ties":
                delta = ties(ds, weights, lam=lam, normalize=normalize, **kw)
            else:
                delta = task_arithmetic(ds, weights, lam, normalize=normalize)
            if shared is not None:
                delta = shared + delta.to(shared.dtype)
            new = self.base.get(n, live)
            add_delta_(new, delta)
            return new

        self._apply(sorted(self.params), compute, f"{method} merge of {names}")
        self.current = None
        return {"merged": names, "method": method, **({"relative_to": relative_to} if ref is not None else {})}


class _NoWriter:
    """What a rank that does not write the folder passes its deltas to."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, name, tensor) -> None:
        pass


class Guard:
    """The forgetting guard: every ``every`` steps, held-out perplexity vs the last good
    snapshot's; above it by more than ``threshold`` → pause training, roll the live weights
    back to that snapshot, record the event."""

    def __init__(self, snaps: Snapshots, every: int, threshold: float):
        self.snaps, self.every, self.threshold = snaps, every, threshold
        self.ref_name: str | None = None  # None = the base
        self.ref_ppl: float | None = None
        self.events: list[dict] = []

    def set_reference(self, name: str | None, ppl: float | None) -> None:
        self.ref_name, self.ref_ppl = name, ppl

    def check(self, trainer) -> dict | None:
        if not self.every or trainer.stats["step"] % self.every:
            return None
        if trainer.stats.get("heldout_step") == trainer.stats["step"] and trainer.stats.get("heldout_ppl") is not None:
            ppl = trainer.stats["heldout_ppl"]  # eval_every just measured these very weights: not twice
        else:
            ppl = trainer.heldout_ppl()
        if ppl is None:
            return None
        trainer.stats["heldout_ppl"], trainer.stats["heldout_step"] = ppl, trainer.stats["step"]
        if self.ref_ppl is None:
            self.ref_ppl = ppl
            return None
        limit = self.ref_ppl * (1 + self.threshold)
        if ppl <= limit and math.isfinite(ppl):
            return None
        # The event is visible (status, /metrics) right after training is paused, during the
        # rollback (heldout_ppl_after null until it is done), not only once the rollback is over.
        ev = {"time": time.time(), "step": trainer.stats["step"], "heldout_ppl": ppl, "limit": limit,
              "reference": self.ref_name or "base", "reference_ppl": self.ref_ppl, "heldout_ppl_after": None,
              "action": "paused training, rolling back"}
        trainer.paused.set()
        self.events.append(ev)
        self.snaps.restore(self.ref_name)
        trainer.reset_optimizer()
        after = trainer.heldout_ppl()
        ev.update(heldout_ppl_after=after, action="paused training and rolled back")
        trainer.stats["heldout_ppl"] = after
        log.warning("plasticity: forgetting guard: held-out perplexity %.3f > %.3f (%s %.3f + %.0f%%) at step %d: "
                    "training paused, live weights rolled back to %s (perplexity now %.3f)", ppl, limit,
                    ev["reference"], self.ref_ppl, 100 * self.threshold, ev["step"], ev["reference"], after)
        return ev

    def status(self) -> dict:
        return {"enabled": bool(self.every), "every": self.every, "threshold": self.threshold,
                "reference": self.ref_name or "base", "reference_ppl": self.ref_ppl, "trips": len(self.events),
                "events": self.events[-10:]}
