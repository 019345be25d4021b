"""The ``[training]`` section of ``plasticity.toml`` (path in ``PLASTICITY_CONFIG``).

```toml
[training]
enabled = false            # routes + worker thread off unless true
lr = 1e-5
rank = 256                 # Apollo projection rank (1 + scale_type="tensor" = Apollo-Mini)
scale_type = "channel"
# alpha = 1.0              # default √(d/r)
update_proj_gap = 200
norm_growth_limit = 1.01
betas = [0.9, 0.999]
weight_decay = 0.0
stochastic_rounding = true # bf16/f16 weights: unbiased rounding, so sub-ulp updates are not lost
atomic_steps = true        # a non-finite gradient mid-backward rolls back the parameters already stepped
                           # (costs a transient copy of the trainable weights during each backward)
modules = ["all-linear"]   # presets: all-linear, attention, mlp, gdn, gdn-gates, norms, embeddings, all;
                           # or leaf names such as "q_proj", "A_log", "dt_bias", "in_proj_qkv"
replay_ratio = 0.25        # fraction of each batch drawn from the replay source
replay_source = ""         # .jsonl ({"text": ...} per line) or .txt; "" = no replay
batch_size = 4             # examples per optimizer step (behavioural + replay), one backward
max_steps = 0              # 0 = unlimited
max_example_tokens = 2048  # context + decision
max_decision_tokens = 512
journal = "training-journal.jsonl"   # accepted examples (fsync'd before the 202)
checkpoint_dir = ""        # "" = no checkpoints
checkpoint_every = 0       # steps between checkpoints (0 = never)
heldout = ""               # text file (.jsonl/.txt) for the held-out perplexity in the status
heldout_tokens = 8192      # evaluate on its first N tokens (windows of 128); the cost grows with N
eval_every = 0             # steps between held-out evaluations (0 = only on request/at start)
threads = 1                # torch/Apollo threads of the training thread
cpus = "auto"              # CPUs of the training thread: "auto" (those serving is not pinned to),
                           # "all", "inherit" (vLLM's mask), or a list "1" / "2-7,10"
idle_cpus = "all"          # while no request is being served, training widens to these CPUs
                           # ("all", a list, or "same" = stay on `cpus`); `threads` caps both
autocast = "off"           # "bf16": forward and backward matmuls in bfloat16 (weights, gradients
                           # and Apollo stay as they are); ~1.6x faster on CPUs with AVX512-BF16/AMX
yield_ms = 0.0             # sleep after each step (leaves CPU to serving)
serving_duty = 0.25        # while requests are being served, training takes at most this
                           # fraction of wall time (sleeps dt·(1-d)/d after a step of dt); 1 = off
serving_idle_ms = 500      # "being served" = a model forward ran within this window
rpc_spin_ms = 20           # how long vLLM's worker spins for the next RPC after one (vLLM's own: 1000);
                           # its spinning takes a core from training whenever anything polls the status;
                           # ≥ 2: with less, vLLM loses the wake-up of an RPC sent right after the last
                           # one and the worker sleeps 5 s (every few decode steps at 0)
queue_capacity = 10000
snapshot_dir = ""          # task-vector snapshots; "" = "snapshots" beside the journal
guard_every = 0            # forgetting guard: held-out perplexity every N steps (0 = off; needs heldout)
guard_threshold = 0.05     # rise over the last good snapshot that pauses + rolls back
max_edit_norm_growth = 2.0 # a merge/add that grows any tensor's norm past this factor is refused (422)
```
Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from . import cpus

ENV = config.ENV

_DEFAULTS = dict(
    enabled=False, lr=1e-5, rank=256, scale_type="channel", alpha=None, update_proj_gap=200,
    norm_growth_limit=1.01, betas=(0.9, 0.999), weight_decay=0.0, stochastic_rounding=True, atomic_steps=True,
    modules=("all-linear",),
    replay_ratio=0.25, replay_source=None, batch_size=4, max_steps=0, max_example_tokens=2048,
    max_decision_tokens=512, journal=None, checkpoint_dir=None, checkpoint_every=0, heldout=None, heldout_tokens=8192,
    eval_every=0, threads=1, cpus="auto", idle_cpus="all", autocast="off", yield_ms=0.0, serving_duty=0.25, serving_idle_ms=500.0, rpc_spin_ms=20.0, queue_capacity=10000, seed=0,
    snapshot_dir=None, guard_every=0, guard_threshold=0.05, max_edit_norm_growth=2.0,
)
AUTOCAST = ("off", "bf16")
MAX_LR = 1.0  # also the bound of POST /v1/training/settings: a larger step only destroys the weights
MAX_GUARD_THRESHOLD = 100.0
# vLLM's RPC reader (shm_broadcast.SpinCondition) loses the zmq wake-up of a message written right
# after its last read; only its 5 s recheck finds it. Spinning this long after each RPC catches
# such back-to-back RPCs (decode steps) without the wake-up: measured on vLLM 0.32, 24 of 60
# back-to-back round trips took 5 s with no spin, none with 2 ms (tests/vllm_adapter/test_worker_rpc_spin.py).
MIN_RPC_SPIN_MS = 2.0
_PATHS = ("replay_source", "journal", "checkpoint_dir", "heldout", "snapshot_dir")


@dataclass
class TrainingConfig:
    enabled: bool = False
    lr: float = 1e-5
    rank: int = 256
    scale_type: str = "channel"
    alpha: float | None = None
    update_proj_gap: int = 200
    norm_growth_limit: float | None = 1.01
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    stochastic_rounding: bool = True
    atomic_steps: bool = True
    modules: tuple = ("all-linear",)
    replay_ratio: float = 0.25
    replay_source: Path | None = None
    batch_size: int = 4
    max_steps: int = 0
    max_example_tokens: int = 2048
    max_decision_tokens: int = 512
    journal: Path | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    heldout: Path | None = None
    heldout_tokens: int = 8192
    eval_every: int = 0
    threads: int = 1
    cpus: str = "auto"
    idle_cpus: str = "all"
    autocast: str = "off"
    yield_ms: float = 0.0
    serving_duty: float = 0.25
    serving_idle_ms: float = 500.0
    rpc_spin_ms: float = 20.0
    queue_capacity: int = 10000
    seed: int = 0
    snapshot_dir: Path | None = None
    guard_every: int = 0
    guard_threshold: float = 0.05
    max_edit_norm_growth: float = 2.0
    source: Path | None = field(default=None, compare=False)

    @property
    def done_journal(self) -> Path | None:
        return None if self.journal is None else self.journal.with_name(self.journal.name + ".done")


_BOOLS = ("enabled", "stochastic_rounding", "atomic_steps")
_INTS = ("rank", "update_proj_gap", "batch_size", "max_steps", "max_example_tokens", "max_decision_tokens",
         "checkpoint_every", "heldout_tokens", "eval_every", "threads", "queue_capacity", "seed", "guard_every")
_NUMBERS = ("lr", "weight_decay", "replay_ratio", "yield_ms", "serving_duty", "serving_idle_ms", "rpc_spin_ms", "guard_threshold",
            "max_edit_norm_growth")
_OPTIONAL_NUMBERS = ("alpha", "norm_growth_limit")  # None only from code: TOML has no null
_TEXTS = ("scale_type", "autocast")


def from_dict(sec: dict, base: Path | None = None, source: Path | None = None) -> TrainingConfig:
    where = source or "config"
    sec = config.section({"training": sec}, "training", where, _DEFAULTS)
    v = {**_DEFAULTS, **sec}
    for k in _BOOLS:
        v[k] = config.flag(v[k], f"training.{k}", where)
    for k in _INTS:
        v[k] = config.integer(v[k], f"training.{k}", where)
    for k in _NUMBERS:
        v[k] = config.number(v[k], f"training.{k}", where)
    for k in _OPTIONAL_NUMBERS:
        v[k] = None if v[k] is None else config.number(v[k], f"training.{k}", where)
    for k in _TEXTS:
        v[k] = config.text(v[k], f"training.{k}", where)
    for k in _PATHS:
        v[k] = config.path_in(base, v[k], f"training.{k}", where)
    if v["journal"] is None and v["enabled"]:
        v["journal"] = ((base or Path.cwd()) / "training-journal.jsonl").resolve()
    mods, betas = v["modules"], v["betas"]
    mods = [mods] if isinstance(mods, str) else mods
    if not isinstance(mods, (list, tuple)) or not all(isinstance(m, str) for m in mods):
        raise ValueError(f"{where}: training.modules must be a string or a list of strings, got {str(mods)[:60]!r}")
    v["modules"] = tuple(mods)
    if not isinstance(betas, (list, tuple)):
        raise ValueError(f"{where}: training.betas must be two numbers in [0, 1), got {str(betas)[:60]!r}")
    v["betas"] = tuple(config.number(b, "training.betas", where) for b in betas)
    try:
        cpus.check_spec(v["cpus"])
    except ValueError as e:
        raise ValueError(f"{where}: training.cpus: {e}") from None
    try:
        cpus.check_idle_spec(v["idle_cpus"])
    except ValueError as e:
        raise ValueError(f"{where}: training.idle_cpus: {e}") from None
    if v["autocast"] not in AUTOCAST:
        raise ValueError(f"{where}: training.autocast must be one of {sorted(AUTOCAST)}, got {str(v['autocast'])[:40]!r}")
    v["snapshot_dir"] = v["snapshot_dir"] or (v["journal"].parent / "snapshots" if v["journal"] else None)
    cfg = TrainingConfig(**{k: v[k] for k in _DEFAULTS}, source=source)
    _check(cfg, where)
    return cfg


def _check(c: TrainingConfig, where) -> None:
    def bad(msg):
        raise ValueError(f"{where}: training.{msg}")

    if not (math.isfinite(c.lr) and 0 <= c.lr <= MAX_LR):
        bad(f"lr must be in [0, {MAX_LR:g}]")
    if c.weight_decay < 0 or (c.norm_growth_limit is not None and c.norm_growth_limit < 1):
        bad("weight_decay must be ≥ 0 and norm_growth_limit ≥ 1 (below 1 every update shrinks toward 0)")
    if c.checkpoint_every < 0 or c.eval_every < 0:
        bad("checkpoint_every and eval_every must be ≥ 0 (0 = never)")
    if not (math.isfinite(c.max_edit_norm_growth) and c.max_edit_norm_growth >= 1):
        bad("max_edit_norm_growth must be a finite number ≥ 1")
    if c.rank < 1:
        bad("rank must be ≥ 1")
    if not 128 <= c.heldout_tokens <= 1 << 20:
        bad("heldout_tokens must be in [128, 1048576] (at least one window of 128 tokens)")
    if c.scale_type not in ("channel", "tensor"):
        bad("scale_type must be 'channel' or 'tensor'")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        bad("betas must be two numbers in [0, 1)")
    if not 0 <= c.replay_ratio < 1:
        bad("replay_ratio must be in [0, 1)")
    if c.batch_size < 1 or c.max_steps < 0 or c.update_proj_gap < 1:
        bad("batch_size and update_proj_gap must be ≥ 1, max_steps ≥ 0")
    if c.max_decision_tokens < 1 or c.max_example_tokens < 2:
        bad("max_decision_tokens must be ≥ 1 and max_example_tokens ≥ 2")
    if c.threads < 1 or c.yield_ms < 0 or c.queue_capacity < 1:
        bad("threads and queue_capacity must be ≥ 1, yield_ms ≥ 0")
    if c.guard_every < 0 or not (math.isfinite(c.guard_threshold) and 0 < c.guard_threshold <= MAX_GUARD_THRESHOLD):
        bad(f"guard_every must be ≥ 0 and guard_threshold a number in (0, {MAX_GUARD_THRESHOLD:g}]")
    if c.guard_every and c.heldout is None:
        bad("guard_every needs a heldout file")
    if not (0 < c.serving_duty <= 1) or not (c.serving_idle_ms >= 0):
        bad("serving_duty must be in (0, 1] and serving_idle_ms ≥ 0")
    if not MIN_RPC_SPIN_MS <= c.rpc_spin_ms <= 10_000:
        bad(f"rpc_spin_ms must be in [{MIN_RPC_SPIN_MS:g}, 10000] (below {MIN_RPC_SPIN_MS:g} ms vLLM's worker can miss "
            "the wake-up of an RPC that follows the last one at once, and sleeps 5 s)")


_read = config.read


def load(path: str | os.PathLike | None = None) -> TrainingConfig:
    got = _read(path)
    if got is None:
        return TrainingConfig()
    doc, p = got
    return from_dict(doc.get("training", {}), base=p.parent, source=p)


# ---- [snapshots]: snapshots served per request as LoRA adapters ----
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values (1 is useless here)


@dataclass(frozen=True)
class SnapshotsConfig:
    """``[snapshots]``: ``serve_max`` adapters at once (0 = off), each of rank ≤ ``serve_max_rank``.

    ``plasticity serve`` turns on vLLM's LoRA (``--enable-lora --max-loras serve_max
    --max-lora-rank serve_max_rank``) when ``serve_max`` > 0.
    """

    serve_max: int = 0
    serve_max_rank: int = 64
    serve_energy: float = 0.99  # default share of each delta's energy an adapter keeps


def snapshots_from_dict(sec: dict, where="config") -> SnapshotsConfig:
    sec = config.section({"snapshots": sec}, "snapshots", where, ("serve_max", "serve_max_rank", "serve_energy"))
    n, r, e = sec.get("serve_max", 0), sec.get("serve_max_rank", 64), sec.get("serve_energy", 0.99)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 64:
        raise ValueError(f"{where}: snapshots.serve_max must be an integer in [0, 64], got {n!r}")
    if isinstance(r, bool) or not isinstance(r, int) or r not in LORA_RANKS:  # 64.0 == 64, but not a rank
        raise ValueError(f"{where}: snapshots.serve_max_rank must be one of {list(LORA_RANKS)}, got {r!r}")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1:
        raise ValueError(f"{where}: snapshots.serve_energy must be in (0, 1], got {e!r}")
    return SnapshotsConfig(serve_max=n, serve_max_rank=r, serve_energy=float(e))


def load_snapshots(path: str | os.PathLike | None = None) -> SnapshotsConfig:
    got = _read(path)
    if got is None:
        return SnapshotsConfig()
    doc, p = got
    return snapshots_from_dict(doc.get("snapshots", {}), where=p)
