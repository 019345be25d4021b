"""Worker side of steering: build the steering state at model load; the RPC bodies
(exposed by ``extension.WorkerExtension``)."""

from __future__ import annotations

import logging

from vllm.v1.worker.gpu_worker import Worker

from plasticity.steering import config as steering_config
from plasticity.steering.spec import SteeringError

from . import runner_v1, runner_v2
from plasticity.steering.slots import SteeringState

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it


def _state(worker) -> SteeringState:
    st = getattr(worker.model_runner, "_plasticity_steering", None)
    if st is None:
        raise SteeringError("steering is not initialised in this worker (model not loaded?)")
    return st


def _build_state(runner) -> SteeringState:
    cfg = steering_config.load()
    text = runner.model_config.hf_text_config
    return SteeringState(
        runner.get_model(),
        hidden=int(text.hidden_size),
        num_layers=int(text.num_hidden_layers),
        max_tokens=int(runner.max_num_tokens),
        dtype=runner.model_config.dtype,
        device=runner.device,
        num_slots=cfg.slots,
        max_abs_scale=cfg.max_abs_scale,
    )


def _wrap_load_model(orig):
    def load_model(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if getattr(self.model_runner, "_plasticity_steering", None) is None:
            self.model_runner._plasticity_steering = _build_state(self.model_runner)
        return out

    load_model._plasticity = True
    return load_model


def rpc(fn):
    # RPC results cross a process boundary: return errors as data instead of
    # raising into vLLM's worker loop.
    def method(self, *args, **kwargs):
        try:
            return {"ok": True, **fn(_state(self), *args, **kwargs)}
        except SteeringError as e:
            return {"ok": False, "error": str(e)}

    method.__name__ = fn.__name__
    return method


def info(st):
    return st.describe()


def register_vector(st, name, layers, data, replace=False):
    return st.register_vector(name, list(layers), data, replace)


def delete_vector(st, name):
    return {"deleted": st.delete_vector(name)}


def request_key(st, proposed):
    return {"key": st.agree_request_key(proposed)}


def install() -> None:
    if not getattr(Worker.load_model, "_plasticity", False):
        Worker.load_model = _wrap_load_model(Worker.load_model)
    runner_v1.install()
    runner_v2.install()
    from . import training  # online training: only when [training] enabled

    training.install()
