"""Worker side of online training (installed only when ``[training] enabled``).

- CPU: keep plain linear weights (hooks memo §3): vLLM's CPU GEMM dispatch
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
- RPC methods ``plasticity_train_*`` (``collective_rpc``).
"""

from __future__ import annotations

import logging
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


class _State:
    def __init__(self, runner, cfg):
        from transformers import AutoConfig, AutoTokenizer

        from plasticity._plasticity import TrainQueue
        from plasticity.training import core, views

        mc = runner.model_config
        hf_cfg = AutoConfig.from_pretrained(mc.model, trust_remote_code=mc.trust_remote_code)
        if hasattr(hf_cfg, "get_text_config"):
            hf_cfg = hf_cfg.get_text_config()
        vmodel = runner.get_model()
        self.model, self.where, trainable = views.build_trainable(vmodel, hf_cfg, cfg.modules)
        self.live = views.live_params(vmodel)
        bad = views.check_zero_copy(self.model, self.live, self.where)
        if bad:
            raise RuntimeError(f"plasticity: trainable views are not zero-copy: {bad[:4]}")
        try:
            tok = AutoTokenizer.from_pretrained(mc.tokenizer)
        except Exception:  # noqa: BLE001
            tok = None
        self.queue = TrainQueue(cfg.queue_capacity)
        self.trainer = core.Trainer(self.model, trainable, cfg, self.queue, LOCK, tokenizer=tok,
                                    last_serve=lambda: _LAST_FORWARD[0])
        self.trainer.load_replay()
        self.trainer.load_heldout()
        self.recovered = self.trainer.recover(cfg.journal)
        self.trainer.start()
        log.info("plasticity: online training started: %d trainable tensors (%d params), %d examples recovered",
                 len(trainable), sum(p.numel() for p in self.trainer.params), self.recovered)


def _state(worker, start=False):
    runner = worker.model_runner
    st = getattr(runner, "_plasticity_training", None)
    if st is None and start:
        with torch.inference_mode(False):
            st = runner._plasticity_training = _State(runner, _cfg())
    if st is None:
        raise RuntimeError("online training is not started in this worker")
    return st


def _rpc(fn, start=False):
    def method(self, *args, **kwargs):
        try:
            with torch.inference_mode(False):
                return {"ok": True, **fn(_state(self, start), *args, **kwargs)}
        except Exception as e:  # noqa: BLE001 - errors cross the process boundary as data
            log.exception("plasticity: training RPC %s failed", fn.__name__)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    method.__name__ = fn.__name__
    return method


def _start(st):
    return {"recovered": st.recovered, "trainable": st.trainer.trainable}


def _enqueue(st, examples):
    return st.trainer.enqueue(list(examples))


def _status(st):
    return st.trainer.status()


def _pause(st):
    st.trainer.paused.set()
    return {"paused": True}


def _resume(st):
    st.trainer.paused.clear()
    return {"paused": False}


def _selfcheck(st, ids):
    """Greedy next tokens of the trainable view module (compare with the served model),
    and the zero-copy check."""
    if isinstance(ids, str):  # dev-mode /collective_rpc passes strings
        ids = [int(x) for x in ids.split(",")]
    with torch.no_grad():
        logits = st.model(input_ids=torch.tensor([list(ids)])).logits[0]
    import os

    import psutil

    return {"argmax": logits.argmax(-1).tolist(), "zero_copy_violations": len(
        __import__("plasticity.training.views", fromlist=["x"]).check_zero_copy(st.model, st.live, st.where)),
        "rss_bytes": psutil.Process(os.getpid()).memory_info().rss}


def _eval(st):
    st.trainer._eval()
    return {"heldout_ppl": st.trainer.stats["heldout_ppl"]}


def _checkpoint(st):
    return {"path": str(st.trainer.checkpoint())}


def _scale_param(st, name, factor):
    """Test hook: multiply one live tensor in place (under the lock)."""
    with LOCK, torch.no_grad():
        st.live[name].mul_(float(factor))
    return {"name": name}


def _digest(st, pattern=""):
    """Test hook: float64 sum and abs-sum of each trainable tensor whose name contains ``pattern``."""
    params = dict(st.model.named_parameters())
    with LOCK, torch.no_grad():
        return {"digest": {n: [float(params[n].double().sum()), float(params[n].double().abs().sum())]
                           for n in st.trainer.trainable if pattern in n}}


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
    from vllm.v1.worker.gpu_worker import Worker

    _keep_plain_cpu_weights()
    if not getattr(GPUModelRunner._model_forward, "_plasticity_train", False):
        GPUModelRunner._model_forward = _wrap_forward(GPUModelRunner._model_forward)
    Worker.plasticity_train_start = _rpc(_start, start=True)
    Worker.plasticity_train_enqueue = _rpc(_enqueue)
    Worker.plasticity_train_status = _rpc(_status)
    Worker.plasticity_train_pause = _rpc(_pause)
    Worker.plasticity_train_resume = _rpc(_resume)
    Worker.plasticity_train_selfcheck = _rpc(_selfcheck)
    Worker.plasticity_train_checkpoint = _rpc(_checkpoint)
    Worker.plasticity_train_eval = _rpc(_eval)
    Worker.plasticity_train_scale_param = _rpc(_scale_param)
    Worker.plasticity_train_digest = _rpc(_digest)
    log.info("plasticity: online-training hooks installed (lr %g, rank %d, modules %s)", cfg.lr, cfg.rank,
             list(cfg.modules))
