"""Worker side of online training (installed only when ``[training] enabled``).

- CPU: keep plain linear weights (docs/design/vllm-hooks.md §3): vLLM's CPU GEMM dispatch
  repacks 2-D weights (oneDNN/sgl) and empties ``weight``; we make those layers
  use ``F.linear`` on the plain tensor instead, so the trainable views alias
  exactly the memory the served forward reads. (The hybrid's bf16 conv1d
  weight is still packed by vLLM; it is kept frozen.)
- ``Worker.load_model`` (wrapped): nothing else; the trainable view module and
  the training thread are created by the first ``plasticity_train_start`` RPC
  (the API server calls it from ``init_state``, after vLLM's warm-up), so
  profiling/compilation never races the trainer.
- ``GPUModelRunner._model_forward`` (wrapped): holds the training lock for the
  whole forward; every parameter update takes the same lock, so no update
  lands halfway through a forward.
- the bodies of the ``plasticity_train_*`` and ``plasticity_tv_*`` RPCs (exposed by
  ``extension.WorkerExtension``).
"""

from __future__ import annotations

import logging
import random
import threading
import time

import torch

log = logging.getLogger("vllm.plasticity.training")

LOCK = threading.Lock()
_LAST_FORWARD = [None]  # monotonic end time of the latest serving forward (the trainer's duty cycle)
_INSTALLED = False


def _cfg():
    from plasticity.training import config

    return config.load()


def _keep_plain_cpu_weights() -> None:
    from vllm.model_executor.layers import linear, vocab_parallel_embedding as vpe
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return

    def wrap(orig):
        def pwal(self, layer):
            w = getattr(layer, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2 and not w.is_meta:
                layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)
                return None
            return orig(self, layer)

        pwal._plasticity = True
        return pwal

    for cls in (linear.UnquantizedLinearMethod, vpe.UnquantizedEmbeddingMethod):
        if not getattr(cls.process_weights_after_loading, "_plasticity", False):
            cls.process_weights_after_loading = wrap(cls.process_weights_after_loading)


def _wrap_forward(orig):
    def _model_forward(self, *args, **kwargs):
        try:
            with LOCK:
                return orig(self, *args, **kwargs)
        finally:
            _LAST_FORWARD[0] = time.monotonic()

    _model_forward._plasticity_train = True
    return _model_forward


def _tensor_parallel_rank(cfg):
    """This worker's place in vLLM's tensor-parallel group, with a gloo group of the trainer's own
    over the same ranks (None at TP=1). What training does not support under TP yet is refused here."""
    from vllm.distributed import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return None
    if ps.get_pp_group().world_size != 1:
        raise RuntimeError("online training does not support pipeline parallelism yet")
    import torch.distributed as dist

    from plasticity.training.tensor_parallel import Rank

    # every worker calls new_group in the same order (this runs in the start RPC, on every rank)
    group = dist.new_group(ranks=list(ps.get_tp_group().ranks), backend="gloo")
    return Rank(rank=ps.get_tensor_model_parallel_rank(), size=tp, group=group)


class _State:
    def __init__(self, runner, cfg):
        from transformers import AutoConfig, AutoTokenizer

        from plasticity.training.queue import ExampleQueue
        from plasticity.training import core, snapshots, views

        mc = runner.model_config
        hf_cfg = AutoConfig.from_pretrained(mc.model, trust_remote_code=mc.trust_remote_code)
        if hasattr(hf_cfg, "get_text_config"):
            hf_cfg = hf_cfg.get_text_config()
        vmodel = runner.get_model()
        self.tp = _tensor_parallel_rank(cfg)
        if self.tp is not None:
            from plasticity.training import tensor_parallel

            vocab = hf_cfg.vocab_size
            hf_cfg = tensor_parallel.local_config(hf_cfg, self.tp.size)  # the shapes of this rank's shards
        self.model, self.where, trainable = views.build_trainable(vmodel, hf_cfg, cfg.modules)
        if self.tp is not None:
            tensor_parallel.parallelize(self.model, vocab, self.tp.group)
        self.live = views.live_params(vmodel)
        bad = views.check_zero_copy(self.model, self.live, self.where)
        if bad:
            raise RuntimeError(f"plasticity: trainable views are not zero-copy: {bad[:4]}")
        try:
            tok = AutoTokenizer.from_pretrained(mc.tokenizer)
        except Exception:  # noqa: BLE001
            tok = None
        self.tok = tok
        self.queue = ExampleQueue(cfg.queue_capacity)
        self.trainer = core.Trainer(self.model, trainable, cfg, self.queue, LOCK, tokenizer=tok,
                                    last_serve=lambda: _LAST_FORWARD[0], tp=self.tp)
        self.trainer.load_replay()
        self.trainer.load_heldout()
        # The base is checked against the live weights before a checkpoint can change them.
        params = dict(self.model.named_parameters())
        trainable_params = {n: params[n] for n in trainable}
        shapes, writer, barrier = None, True, None
        if self.tp is not None:  # snapshots hold whole tensors with their HF names, whatever the TP size
            trainable_params = tensor_parallel.whole_params(trainable_params, self.tp, vocab)
            shapes = tensor_parallel.whole_shapes(self.model, self.tp, vocab)
            writer, barrier = self.tp.rank == 0, self.tp.barrier
        self.base = snapshots.BaseWeights(mc.model, trainable_params)
        self.snaps = snapshots.Snapshots(cfg.snapshot_dir, trainable_params, self.base, LOCK,
                                         snapshots.fingerprint(self.model, shapes), model_path=str(mc.model),
                                         writer=writer, barrier=barrier)
        self.snaps.max_norm_growth = cfg.max_edit_norm_growth
        self.cfg = cfg
        self.recovered = self.trainer.recover(cfg.journal)
        from plasticity.training.version import WeightsVersion, version_path

        self.trainer.version = WeightsVersion(version_path(cfg.journal))  # after recovery's restore
        if cfg.guard_every:
            self.trainer.guard = snapshots.Guard(self.snaps, cfg.guard_every, cfg.guard_threshold)
            if self.trainer.stats.get("checkpoint_step") is not None:
                # the live weights are a restored checkpoint, not the base: make them the reference
                self.trainer.submit(lambda: self.save_snapshot(
                    f"auto-step-{self.trainer.stats['step']}-{int(time.time())}", {"auto": "guard reference"}), changes_weights=False)
        from .rpc_spin import set_rpc_spin

        self.rpc_spin_readers = set_rpc_spin(cfg.rpc_spin_ms / 1000)
        self.trainer.start()
        log.info("plasticity: online training started: %d trainable tensors (%d params), %d examples recovered",
                 len(trainable), sum(p.numel() for p in self.trainer.params), self.recovered)


    # ---- snapshots (run on the training thread through Trainer.submit) ----
    def save_snapshot(self, name, extra=None):
        tr, cfg = self.trainer, self.cfg
        ppl = tr.heldout_ppl() if tr.heldout_ids is not None else None
        meta = self.snaps.save(name, {
            "step": tr.stats["step"], "examples_done": tr.stats["examples_done"], "heldout_ppl": ppl,
            "heldout": str(cfg.heldout) if cfg.heldout else None, "modules": list(cfg.modules),
            "dtype": str(next(iter(self.snaps.params.values())).dtype).removeprefix("torch."),
            "training": {"lr": cfg.lr, "rank": cfg.rank, "scale_type": cfg.scale_type, "alpha": cfg.alpha,
                         "update_proj_gap": cfg.update_proj_gap, "norm_growth_limit": cfg.norm_growth_limit,
                         "betas": list(cfg.betas), "weight_decay": cfg.weight_decay,
                         "replay_ratio": cfg.replay_ratio, "optimizer": "apollo"},
            **(extra or {})})
        if tr.guard is not None and ppl is not None:
            tr.guard.set_reference(name, ppl)  # the last good snapshot
        return meta

    def restore_snapshot(self, name):
        res = self.snaps.restore(None if name in (None, "base") else name)
        self.trainer.reset_optimizer()
        if self.trainer.guard is not None:
            ppl = self.trainer.heldout_ppl()
            self.trainer.guard.set_reference(None if name in (None, "base") else name, ppl)
            res["heldout_ppl"] = ppl
        return res

    def extract_steering(self, args):
        """A steering vector from contrastive pairs, read from the live weights (what is served
        now, after training), with the same code as ``plasticity steer extract``."""
        from plasticity.steering import extract as ex

        if self.tok is None:
            raise RuntimeError("the worker has no tokenizer for the served model")
        dirs = ex.extract(self.model, self.tok, [tuple(p) for p in args["pairs"]], method=args["method"],
                          layers=[int(x) for x in args["layers"]])
        return {"directions": {int(k): [float(x) for x in v] for k, v in dirs.items()}}

    def apply(self, spec):
        from plasticity.training.snapshots import SnapshotError

        if not isinstance(spec, dict):
            raise SnapshotError("body must be a JSON object")
        m = spec.get("method")
        if m in ("add", "negate"):
            scale = -1.0 if m == "negate" else spec.get("scale", 1.0)
            res = self.snaps.add(spec.get("snapshot"), scale)
        else:
            res = self.snaps.merge(m, spec.get("snapshots"), spec.get("weights"), spec.get("lambda", 1.0),
                                   spec.get("density"), spec.get("normalize"), spec.get("relative_to"))
        self.trainer.reset_optimizer()
        return res

    def serve_lora(self, args):
        """Build the adapter that serves snapshot ``args["name"]`` beside the live weights (see
        training/snapshot_routes.py); returns its folder, report and the weights version it is for."""
        from plasticity.taskvec.lora import DEFAULT_MAX_LEFT_OUT, LoraExportError, RankChoice
        from plasticity.taskvec.snapshot_folder import NAME_RULE, is_snapshot_name
        from plasticity.training.config import load_snapshots
        from plasticity.training.snapshots import SERVED_DIR, SnapshotError

        sc = load_snapshots()
        name = args.get("name")
        if not is_snapshot_name(name):
            raise SnapshotError(f"bad snapshot name {name!r}: {NAME_RULE}")
        rank, energy = args.get("rank"), args.get("energy")
        cap = args.get("max_rank", sc.serve_max_rank)
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > sc.serve_max_rank:
            raise SnapshotError(f"max_rank {cap} is above the server's slot rank serve_max_rank = "
                                f"{sc.serve_max_rank}", 422)
        if isinstance(rank, int) and not isinstance(rank, bool) and rank > sc.serve_max_rank:
            raise SnapshotError(f"rank {rank} is above the server's slot rank serve_max_rank = "
                                f"{sc.serve_max_rank}", 422)
        choice = RankChoice(rank=rank, energy=sc.serve_energy if rank is None and energy is None else energy,
                            max_rank=cap, max_left_out=args.get("max_left_out", DEFAULT_MAX_LEFT_OUT))
        try:
            choice.check()
        except LoraExportError as e:
            raise SnapshotError(str(e), 422) from None
        v = self.trainer.version
        version = f"{v.epoch:x}.{v.count}" if v is not None else "0.0"
        out = self.snaps.root / SERVED_DIR / f"{name}-{version}-{time.time_ns()}"
        out.parent.mkdir(exist_ok=True)
        report = self.snaps.lora_from_live(name, choice, out)
        keep = ("rel_error", "rel_error_lora_modules", "ranks", "adapter_params", "left_out_share", "seconds",
                "choice")
        return {"path": str(out), "weights_version": version, **{k: report[k] for k in keep},
                "left_out": [x["name"] for x in report["left_out"]]}


def _state(worker, start=False):
    runner = worker.model_runner
    st = getattr(runner, "_plasticity_training", None)
    if st is None and start:
        if not _INSTALLED:  # the forward lock and plain weights are only in place when [training] enabled
            raise RuntimeError("online training is not enabled in this server ([training] enabled = false)")
        with torch.inference_mode(False):
            st = runner._plasticity_training = _State(runner, _cfg())
    if st is None:
        raise RuntimeError("online training is not started in this worker")
    return st


def rpc(fn, start=False):
    def method(self, *args, **kwargs):
        try:
            with torch.inference_mode(False):
                return {"ok": True, **fn(_state(self, start), *args, **kwargs)}
        except Exception as e:  # noqa: BLE001 - errors cross the process boundary as data
            log.exception("plasticity: training RPC %s failed", fn.__name__)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    method.__name__ = fn.__name__
    return method


def start(st):
    return {"recovered": st.recovered, "trainable": st.trainer.trainable}


def enqueue(st, examples):
    return st.trainer.enqueue(list(examples))


def status(st):
    return st.trainer.status()


def pause(st):
    st.trainer.paused.set()
    return {"paused": True}


def resume(st):
    st.trainer.paused.clear()
    return {"paused": False}


def evaluate(st):
    _one_rank_only(st, "an evaluation on request")
    st.trainer._eval()
    return {"heldout_ppl": st.trainer.stats["heldout_ppl"]}


def checkpoint(st):
    _one_rank_only(st, "a checkpoint")
    return {"path": str(st.trainer.checkpoint())}


def settings(st, changes=None):
    """Change training settings while serving (lr, guard_threshold, replay_seed); returns the current ones.
    Every value is checked (strict numbers, bounded) before any is applied."""
    from plasticity.numbers import parse_float, parse_int
    from plasticity.training.config import MAX_GUARD_THRESHOLD, MAX_LR

    if not isinstance(changes, dict):
        raise ValueError("settings must be a JSON object")
    changes = dict(changes)
    unknown = set(changes) - {"lr", "guard_threshold", "replay_seed"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(str(k)[:40] for k in unknown)[:10]} "
                         "(supported: lr, guard_threshold, replay_seed)")
    seed = parse_int(changes["replay_seed"], "replay_seed", lo=0, hi=2**63 - 1) if "replay_seed" in changes else None
    thr = (parse_float(changes["guard_threshold"], "guard_threshold", lo=1e-9, hi=MAX_GUARD_THRESHOLD)
           if "guard_threshold" in changes else None)
    if thr is not None and st.trainer.guard is None:
        raise ValueError("guard_threshold needs the guard enabled (guard_every > 0)")
    lr = parse_float(changes["lr"], "lr", lo=0.0, hi=MAX_LR) if "lr" in changes else None
    if seed is not None:
        # Restart the replay sampler: runs started with the same seed replay the same windows, so
        # the part of their task vectors that replay makes is shared (merges relative_to a
        # replay-only snapshot subtract it; docs/results/task-vectors-on-the-server.md, "Round 5").
        st.trainer.rng, st.trainer.replay_credit = random.Random(seed), 0.0
    if thr is not None:
        st.trainer.guard.threshold = thr
    if lr is not None:
        for g in st.trainer.opt.param_groups:
            g["lr"] = lr
    return {"lr": st.trainer.opt.param_groups[0]["lr"],
            "guard_threshold": None if st.trainer.guard is None else st.trainer.guard.threshold,
            **({"replay_seed": changes["replay_seed"]} if "replay_seed" in changes else {})}


def _one_rank_only(st, what: str) -> None:
    """Under TP the view's forward runs collectives with the other ranks, so only the training
    thread's agreed turns may use it; these operations are not wired to those turns yet (snapshot
    operations are: they run as control jobs, which the ranks agree on)."""
    if st.tp is not None:
        raise RuntimeError(f"{what} is not supported under tensor parallelism yet "
                           f"(tensor-parallel size {st.tp.size}); see docs/distributed.md")


def embed(st, batch):
    """Mean-pooled final hidden states of the live weights (the dream loop's novelty filter).
    ``batch``: lists of token ids. Read-only; runs outside the lock (a concurrent update makes
    one embedding mix old and new weights, harmless for a similarity filter)."""
    _one_rank_only(st, "embedding with the live weights")
    out = []
    with torch.no_grad():
        for ids in batch:
            ids = [int(t) for t in ids][:2048] or [0]
            h = st.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
            out.append(h.float().mean(0).tolist())
    return {"embeddings": out}


def discard(st):
    """Drop every queued example (e.g. after a guard trip); they are journaled as discarded."""
    return {"discarded": st.trainer.discard_queued()}


def tv_submit(st, op, args=None):
    """Queue a snapshot operation on the training thread; poll ``plasticity_tv_job``."""
    if op in ("lora", "extract"):
        _one_rank_only(st, f"the snapshot operation {op!r}")
    args = dict(args or {})
    fns = {
        "save": lambda: st.save_snapshot(args.get("name"), {"note": args["note"]} if args.get("note") else None),
        "restore": lambda: st.restore_snapshot(args.get("to")),
        "apply": lambda: st.apply(args),
        "annotate": lambda: st.snaps.add_eval(args.get("name"), args.get("eval")),
        "lora": lambda: st.serve_lora(args),
        "extract": lambda: st.extract_steering(args),
    }
    if op not in fns:
        raise ValueError(f"unknown snapshot operation {op!r}")
    return {"job": st.trainer.submit(fns[op], changes_weights=op in ("restore", "apply"))}


def tv_job(st, jid):
    return {"job": st.trainer.job(jid)}


def tv_list(st):
    return {"snapshots": st.snaps.list(), "current": st.snaps.current, "base": st.base.info()}


def tv_meta(st, name):
    from plasticity.training.snapshots import SnapshotError

    try:
        return {"meta": st.snaps.meta(name)}
    except SnapshotError as e:
        return {"error_code": e.code, "message": str(e)}


def install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    try:
        cfg = _cfg()
    except Exception as e:  # noqa: BLE001
        log.error("plasticity: bad [training] config: %s", e)
        return
    if not cfg.enabled:
        return
    _INSTALLED = True
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _keep_plain_cpu_weights()
    if not getattr(GPUModelRunner._model_forward, "_plasticity_train", False):
        GPUModelRunner._model_forward = _wrap_forward(GPUModelRunner._model_forward)
    log.info("plasticity: online-training hooks installed (lr %g, rank %d, modules %s)", cfg.lr, cfg.rank,
             list(cfg.modules))
