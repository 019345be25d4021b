"""`plasticity.Apollo`: the Apollo optimizer as a `torch.optim.Optimizer`.

Every step runs in Rust (plasticity-core) in place on the tensors' own memory:
no copies of weights, gradients or state. 2-D parameters whose smaller side is
larger than the rank get Apollo; everything else (norms, biases, tiny matrices,
groups with ``apollo=False``) gets the plain AdamW step of the same convention.

``fused=True`` steps each parameter from a post-accumulate-grad hook as soon as
its gradient is complete and frees that gradient at once, so at most one
parameter's gradient exists at a time instead of the whole model's.

CUDA parameters are stepped on the device (docs/gpu.md): Apollo matrices by plasticity's kernels
on a side stream ordered against torch's current stream with events, the AdamW ones by torch ops;
nothing waits for the host. Their step counts, limiter norms and skips live on the device until
:meth:`Apollo.sync_device_state` (called by ``state_dict``) reads them back, so ``skipped`` and
``state[p]["step"]`` of a CUDA parameter are current only after a sync.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import torch

from . import _plasticity as _rs

log = logging.getLogger("plasticity.optim")

_SCALE_TYPES = ("channel", "tensor")
# Per-parameter state that lives on a CUDA device and is rebuilt from "step"/"prev_norm"/"skipped":
# never saved in a state_dict.
_DEVICE_KEYS = ("_cuda", "_step_t", "_skipped_t")


class Apollo(torch.optim.Optimizer):
    """Apollo (arXiv:2412.05270) with channel- or tensor-wise scaling.

    Args:
        lr: learning rate (fine-tuning: 1e-5 … 1e-4).
        betas, eps, weight_decay, correct_bias: as in (HF) AdamW; weight decay
            is decoupled and applied after the update, ``W -= lr·wd·W``.
        rank: projection rank r (Apollo: 256; Apollo-Mini: 1 with
            ``scale_type="tensor"``).
        scale_type: ``"channel"`` (one factor per row/column) or ``"tensor"``.
        alpha: update multiplier; ``None`` means √(d/r), d = min(m, n) (the
            paper's compensation for the projection; apollo-torch's ``scale``
            is α²).
        update_proj_gap: steps between projection refreshes (200).
        norm_growth_limit: γ of the norm-growth limiter (1.01); ``None`` off.
        stochastic_rounding: unbiased rounding of bf16/f16 weights (otherwise
            updates below half an ulp are lost).
        projection_precision: ``"auto"`` (bf16 for 16-bit weights, as the
            reference does, f32 for f32 weights), ``"f32"`` or ``"bf16"``. The
            projection only feeds the channel norms; bf16 uses AVX512-BF16
            (about twice the GEMM throughput) where the CPU has it.
        seed: base seed of the projections (each parameter derives its own).
        threads: optimizer threads (default: ``torch.get_num_threads()``).
        cache_projection: keep each projection between refreshes instead of
            regenerating it every step (r·d floats per matrix; faster).
        fused: step from post-accumulate-grad hooks and free each gradient.

    Per-group keys accepted: all of the above except threads/cache/fused,
    plus ``apollo`` (False = plain AdamW for the whole group).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        rank: int = 256,
        scale_type: str = "channel",
        alpha: float | None = None,
        update_proj_gap: int = 200,
        norm_growth_limit: float | None = 1.01,
        stochastic_rounding: bool = False,
        projection_precision: str = "auto",
        seed: int = 0,
        threads: int | None = None,
        cache_projection: bool = False,
        fused: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            correct_bias=correct_bias,
            rank=rank,
            scale_type=scale_type,
            alpha=alpha,
            update_proj_gap=update_proj_gap,
            norm_growth_limit=norm_growth_limit,
            stochastic_rounding=stochastic_rounding,
            projection_precision=projection_precision,
            seed=seed,
            apollo=True,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group)
        self._cache_projection = cache_projection
        self._workspace = _rs.Workspace(threads or torch.get_num_threads(), cache_projection)
        self.fused = fused
        self.skipped = 0  # parameter steps skipped for a non-finite gradient
        self.reduced_bytes = 0  # bytes this rank put into tensor-parallel sums (see shard())
        self._groups: dict[int, Any] = {}  # id(p) -> the process group of a sharded p
        self._hooks: list[Any] = []
        # Seeds depend only on a parameter's position, so they survive
        # state_dict round trips and are the same in every process.
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                self.state[p]["seed"] = (int(group["seed"]) * 1_000_003 + index) % (1 << 63)
        if fused:
            self._install_hooks()

    # -- public helpers ------------------------------------------------------

    def uses_apollo(self, p: torch.Tensor, group: dict | None = None) -> bool:
        """Whether ``p`` is stepped by Apollo (else by plain AdamW)."""
        group = group or self._group_of(p)
        shape = self.state[p]["shard"]["global_shape"] if "shard" in self.state[p] else tuple(p.shape)
        return bool(group["apollo"]) and p.dim() == 2 and min(shape) > int(group["rank"])

    def shard(self, p: torch.Tensor, *, axis: str, offset: int, global_shape: tuple[int, int],
              group: Any = None) -> None:
        """Declare ``p`` one tensor-parallel rank's block of a ``global_shape`` matrix: rows
        ``offset…`` (``axis="rows"``, a column-parallel layer) or columns (``"cols"``, row-parallel).

        Its steps then equal the whole matrix's Apollo step (up to the order of the sums): every
        rank of ``group`` (a ``torch.distributed`` process group; None = the default group) must
        step it in the same order with the same state. Apollo sums R over the group only when
        the shard cuts the compressed dimension, else a few scalars; ``reduced_bytes`` counts
        what this rank put into those sums. AdamW parameters (1-D, small) need no sums: their
        update is elementwise."""
        if axis not in ("rows", "cols"):
            raise ValueError(f"axis must be 'rows' or 'cols', got {axis!r}")
        gm, gn = (int(x) for x in global_shape)
        m, n = p.shape if p.dim() == 2 else (0, 0)
        along, whole, across, whole_across = (m, gm, n, gn) if axis == "rows" else (n, gn, m, gm)
        if p.dim() != 2 or across != whole_across or offset < 0 or offset + along > whole:
            raise ValueError(f"a {tuple(p.shape)} block at {axis} offset {offset} is not a shard of a "
                             f"{gm}×{gn} matrix")
        if "step" in self.state[p]:
            raise ValueError("declare shards before the first step")
        if p.is_cuda:
            raise ValueError("tensor-parallel shards are stepped on the CPU only (no CUDA sharded step yet)")
        if self.fused:
            raise ValueError("a fused Apollo steps each parameter alone; shards are stepped together: use fused=False")
        self.state[p]["shard"] = {"axis": axis, "offset": int(offset), "global_shape": (gm, gn)}
        self._groups[id(p)] = group

    def state_bytes(self) -> int:
        """Bytes of optimizer state tensors (moments) over all parameters."""
        return sum(
            t.numel() * t.element_size()
            for st in self.state.values()
            for t in st.values()
            if isinstance(t, torch.Tensor)
        )

    def restart_workers(self, threads: int) -> None:
        """Start a fresh pool of ``threads`` step threads from the calling thread (they inherit its
        CPU affinity; the old pool's threads end). Scratch and projection caches start empty."""
        self._workspace = _rs.Workspace(int(threads), self._cache_projection)

    @property
    def workspace_bytes(self) -> int:
        return self._workspace.scratch_bytes + self._workspace.cache_bytes

    def inject_projection(self, p: torch.Tensor, projection: torch.Tensor) -> None:
        """Test hook: use ``projection`` (rank×d, f32) for ``p`` until the next
        refresh boundary instead of the seeded one. Lets a test feed the very
        matrix a reference implementation drew with its own RNG."""
        st = self.state[p]
        group = self._group_of(p)
        step = int(st.get("step", 0))
        st["_proj"] = (step // int(group["update_proj_gap"]), projection.detach().to(torch.float32).contiguous())

    # -- torch.optim.Optimizer API -------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            shards = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "shard" in self.state[p] and self.uses_apollo(p, group):
                    shards.append(p)  # stepped together below: three sums over ranks in all
                else:
                    self._step_param(p, group)
            if shards:
                self._step_shards(shards, group)
        return loss

    def state_dict(self) -> dict:
        """As torch's, after :meth:`sync_device_state`, without the device-side handles."""
        self.sync_device_state()
        sd = super().state_dict()
        sd["state"] = {k: {kk: vv for kk, vv in v.items() if kk not in _DEVICE_KEYS} for k, v in sd["state"].items()}
        return sd

    def sync_device_state(self) -> None:
        """Read CUDA parameters' step counts, limiter norms and skipped steps back from the device
        (waits for their queued steps) into ``state[p]`` and ``skipped``. CPU parameters need none."""
        for p, st in self.state.items():
            handle, step_t = st.get("_cuda"), st.get("_step_t")
            if handle is not None:
                d = handle.state()
                step, skipped = int(d["step"]), int(d["skipped"])
                if d["prev_norm"] is not None:
                    st["prev_norm"], st["limiter"] = float(d["prev_norm"]), float(d["limiter"])
            elif step_t is not None:
                step, skipped = int(step_t.item()), int(st["_skipped_t"].item())
            else:
                continue
            new = skipped - int(st.get("skipped", 0))
            st["step"], st["skipped"] = step, skipped
            if new > 0:
                self.skipped += new
                log.warning("Apollo: %d non-finite gradient(s) for a %s CUDA parameter; those steps were skipped, "
                            "the weight unchanged", new, tuple(p.shape))

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; moments are f32.
        for st in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                t = st.get(key)
                if isinstance(t, torch.Tensor) and t.dtype != torch.float32:
                    raise ValueError(f"state {key} lost its float32 dtype on load")
        for group in self.param_groups:
            _check_group(group)

    # -- internals -----------------------------------------------------------

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not managed by this optimizer")

    def _install_hooks(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue

                def hook(param: torch.Tensor, group: dict = group) -> None:
                    with torch.no_grad():
                        self._step_param(param, group)
                    param.grad = None

                self._hooks.append(p.register_post_accumulate_grad_hook(hook))

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("Apollo does not support sparse gradients")
        if not grad.is_contiguous():
            grad = grad.contiguous()
        st = self.state[p]
        if p.is_cuda:
            self._step_param_cuda(p, grad, group, st)
            return
        beta1, beta2 = group["betas"]
        common = dict(
            lr=float(group["lr"]),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            correct_bias=bool(group["correct_bias"]),
            stochastic_rounding=bool(group["stochastic_rounding"]),
            workspace=self._workspace,
        )
        step = int(st.get("step", 0))
        if self.uses_apollo(p, group):
            rank = int(group["rank"])
            m, n = p.shape
            shape = (m, rank) if m >= n else (rank, n)
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                st["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
            gap = int(group["update_proj_gap"])
            projection = None
            injected = st.get("_proj")
            if injected is not None:
                if injected[0] == step // gap:
                    projection = injected[1]
                else:
                    del st["_proj"]
            applied, new_step, prev_norm, limiter, _ = _rs.apollo_step(
                p, grad, st["exp_avg"], st["exp_avg_sq"],
                step=step,
                seed=int(st["seed"]),
                prev_norm=st.get("prev_norm"),
                rank=rank,
                scale_type=group["scale_type"],
                alpha=None if group["alpha"] is None else float(group["alpha"]),
                update_proj_gap=gap,
                norm_growth_limit=None if group["norm_growth_limit"] is None else float(group["norm_growth_limit"]),
                projection=projection,
                projection_precision=group["projection_precision"],
                **common,
            )
            if applied:
                st["prev_norm"] = prev_norm
                st["limiter"] = limiter
        else:
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                st["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            applied, new_step = _rs.adamw_step(
                p, grad, st["exp_avg"], st["exp_avg_sq"], step=step, seed=int(st["seed"]), **common
            )
        st["step"] = new_step
        if not applied:
            self.skipped += 1
            st["skipped"] = int(st.get("skipped", 0)) + 1
            log.warning("Apollo: non-finite gradient for a %s parameter; step skipped, weight unchanged",
                        tuple(p.shape))


    def _step_param_cuda(self, p: torch.Tensor, grad: torch.Tensor, group: dict, st: dict) -> None:
        """One step of a CUDA parameter, queued without a host sync (see the module docs)."""
        from plasticity import cuda

        ordinal = p.device.index if p.device.index is not None else torch.cuda.current_device()
        why = cuda.kernels_ready(ordinal)
        if why is not None:
            raise RuntimeError(f"Apollo on {p.device} needs plasticity's CUDA kernels, which cannot run here: {why}")
        if group["stochastic_rounding"]:
            raise ValueError("stochastic_rounding is not available for CUDA parameters yet")
        if "_proj" in st:
            raise ValueError("inject_projection is a test hook of the CPU step")
        if grad.device != p.device:
            raise ValueError(f"grad is on {grad.device}, the parameter on {p.device}")
        beta1, beta2 = (float(b) for b in group["betas"])
        stream = torch.cuda.current_stream(p.device).cuda_stream
        if self.uses_apollo(p, group):
            rank = int(group["rank"])
            m, n = p.shape
            if "exp_avg" not in st:
                shape = (m, rank) if m >= n else (rank, n)
                st["exp_avg"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                st["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
            handle = st.get("_cuda")
            if handle is None:
                handle = _rs.CudaApollo(m, n, rank, str(p.dtype).removeprefix("torch."), ordinal, int(st["seed"]))
                if "step" in st:  # a loaded checkpoint, or steps taken on the CPU before a move
                    handle.set_state(int(st["step"]), st.get("prev_norm"), int(st.get("skipped", 0)))
                st["_cuda"] = handle
            handle.step(
                p, grad, st["exp_avg"], st["exp_avg_sq"], stream=stream,
                lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]), correct_bias=bool(group["correct_bias"]),
                rank=rank, scale_type=group["scale_type"],
                alpha=None if group["alpha"] is None else float(group["alpha"]),
                update_proj_gap=int(group["update_proj_gap"]),
                norm_growth_limit=None if group["norm_growth_limit"] is None else float(group["norm_growth_limit"]),
                stochastic_rounding=False,
            )
        else:
            _adamw_on_device(p, grad, st, group, beta1, beta2)

    def _step_shards(self, params: list, group: dict) -> None:
        """One Apollo step on tensor-parallel shards (see :meth:`shard`), one call per dtype;
        every rank steps the same parameters in the same order."""
        import torch.distributed as dist

        rank = int(group["rank"])
        by_dtype: dict = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        beta1, beta2 = group["betas"]
        for dtype in sorted(by_dtype, key=str):
            batch = by_dtype[dtype]
            jobs = []
            for p in batch:
                st, sh = self.state[p], self.state[p]["shard"]
                gm, gn = sh["global_shape"]
                m, n = p.shape
                if "exp_avg" not in st:
                    shape = (m, rank) if gm >= gn else (rank, n)  # the whole matrix's side
                    st["exp_avg"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                    st["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
                jobs.append((p, grad, st["exp_avg"], st["exp_avg_sq"], sh["axis"], sh["offset"], (gm, gn),
                             int(st.get("step", 0)), int(st["seed"]), st.get("prev_norm")))
            pg = self._groups.get(id(batch[0]))
            if any(self._groups.get(id(p)) is not pg for p in batch):
                raise ValueError("the shards of one parameter group must share one process group")

            def all_reduce(kind: str, buf: bytearray, pg=pg) -> None:
                t = torch.frombuffer(buf, dtype=torch.float32 if kind == "f32" else torch.float64)
                self.reduced_bytes += len(buf)
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=pg)

            outs = _rs.apollo_step_sharded(
                jobs, all_reduce=all_reduce, lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                correct_bias=bool(group["correct_bias"]), rank=rank, scale_type=group["scale_type"],
                alpha=None if group["alpha"] is None else float(group["alpha"]),
                update_proj_gap=int(group["update_proj_gap"]),
                norm_growth_limit=None if group["norm_growth_limit"] is None else float(group["norm_growth_limit"]),
                stochastic_rounding=bool(group["stochastic_rounding"]), workspace=self._workspace,
                projection_precision=group["projection_precision"],
            )
            for p, (applied, new_step, prev_norm, limiter, _) in zip(batch, outs):
                st = self.state[p]
                st["step"] = new_step
                if applied:
                    st["prev_norm"], st["limiter"] = prev_norm, limiter
                else:
                    self.skipped += 1
                    st["skipped"] = int(st.get("skipped", 0)) + 1
                    log.warning("Apollo: non-finite gradient on some rank for a %s shard; step skipped on every "
                                "rank", tuple(p.shape))


@torch.no_grad()
def _adamw_on_device(p: torch.Tensor, grad: torch.Tensor, st: dict, group: dict, beta1: float, beta2: float) -> None:
    """The CPU path's AdamW (HF convention, decoupled decay after the update) in torch ops on p's device,
    with the step count on the device too: a non-finite gradient leaves the weight and the moments as
    they were and counts as skipped, with no host sync."""
    if "exp_avg" not in st:
        st["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        st["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    if "_step_t" not in st:
        st["_step_t"] = torch.full((), int(st.get("step", 0)), dtype=torch.float64, device=p.device)
        st["_skipped_t"] = torch.full((), int(st.get("skipped", 0)), dtype=torch.int64, device=p.device)
    g = grad.float()
    ok = torch.isfinite(g).all()
    m1, m2 = st["exp_avg"], st["exp_avg_sq"]
    new_m1 = beta1 * m1 + (1.0 - beta1) * g
    new_m2 = beta2 * m2 + ((1.0 - beta2) * g) * g
    step_t = st["_step_t"] + ok.double()
    lr = float(group["lr"])
    if group["correct_bias"]:
        step_size = (lr * torch.sqrt(1.0 - beta2 ** step_t) / (1.0 - beta1 ** step_t)).float()
    else:
        step_size = torch.tensor(lr, dtype=torch.float32, device=p.device)
    w = p.float()
    y = w - step_size * (new_m1 / (new_m2.sqrt() + float(group["eps"])))
    decay = lr * float(group["weight_decay"])
    if decay > 0:
        y = y - decay * y
    p.copy_(torch.where(ok, y, w).to(p.dtype))  # w round-trips exactly: a skip leaves p's bits
    m1.copy_(torch.where(ok, new_m1, m1))
    m2.copy_(torch.where(ok, new_m2, m2))
    st["_step_t"].copy_(step_t)
    st["_skipped_t"].add_((~ok).long())


def _check_group(group: dict) -> None:
    group.setdefault("projection_precision", "auto")
    if group["projection_precision"] not in ("auto", "f32", "bf16"):
        raise ValueError(f"projection_precision must be 'auto', 'f32' or 'bf16', got {group['projection_precision']!r}")
    if group["scale_type"] not in _SCALE_TYPES:
        raise ValueError(f"scale_type must be one of {_SCALE_TYPES}, got {group['scale_type']!r}")
    if int(group["rank"]) < 1:
        raise ValueError(f"rank must be ≥ 1, got {group['rank']}")
    if int(group["update_proj_gap"]) < 1:
        raise ValueError(f"update_proj_gap must be ≥ 1, got {group['update_proj_gap']}")
    lr = float(group["lr"])
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be finite and ≥ 0, got {lr}")
    if group["alpha"] is not None and not (math.isfinite(float(group["alpha"])) and float(group["alpha"]) > 0):
        raise ValueError(f"alpha must be finite and > 0, got {group['alpha']}")
    for p in group["params"]:
        if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"Apollo supports float32/bfloat16/float16 parameters, got {p.dtype}")
