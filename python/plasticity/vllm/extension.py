"""The worker extension class: every ``plasticity_*`` RPC the API server calls with ``collective_rpc``.

vLLM mixes this class into its worker class when it is named by ``--worker-extension-cls``
(``plasticity serve`` passes it; docs/design/vllm-hooks.md §1). The methods return errors as
data (``{"ok": False, "error": ...}``), since an exception would cross into vLLM's worker loop.

Steering RPCs work in every plasticity server. Training and snapshot RPCs answer "not started"
unless ``[training] enabled`` (the API server starts training with ``plasticity_train_start``).
"""

from __future__ import annotations

from . import training, worker

QUALNAME = "plasticity.vllm.extension.WorkerExtension"


class WorkerExtension:
    # steering: the vector table in this worker (vllm/worker.py)
    plasticity_info = worker.rpc(worker.info)
    plasticity_register_vector = worker.rpc(worker.register_vector)
    plasticity_delete_vector = worker.rpc(worker.delete_vector)
    plasticity_request_key = worker.rpc(worker.request_key)

    # online training (vllm/training.py)
    plasticity_train_start = training.rpc(training.start, start=True)
    plasticity_train_enqueue = training.rpc(training.enqueue)
    plasticity_train_status = training.rpc(training.status)
    plasticity_train_pause = training.rpc(training.pause)
    plasticity_train_resume = training.rpc(training.resume)
    plasticity_train_checkpoint = training.rpc(training.checkpoint)
    plasticity_train_eval = training.rpc(training.evaluate)
    plasticity_train_settings = training.rpc(training.settings)
    plasticity_train_discard = training.rpc(training.discard)
    plasticity_train_embed = training.rpc(training.embed)

    # snapshots and task vectors, run on the training thread between steps
    plasticity_tv_submit = training.rpc(training.tv_submit)
    plasticity_tv_job = training.rpc(training.tv_job)
    plasticity_tv_list = training.rpc(training.tv_list)
    plasticity_tv_meta = training.rpc(training.tv_meta)


def active(qualname: str | None, config_path: str | None) -> bool:
    """Whether plasticity runs on this server. Installed in vLLM's environment, its entry points load
    in every ``vllm serve``: without the extension class and without a plasticity config it stays
    off (False; steering flags are then refused), so plain vLLM keeps serving. A config without
    the class, or a class that is not ours, is refused (see :func:`require`)."""
    if not qualname and not config_path:
        return False
    require(qualname)
    return True


def require(qualname: str | None) -> None:
    """Refuse to start a server whose workers lack these RPCs (the API server calls this first)."""
    if not qualname:
        raise RuntimeError("plasticity: the workers have no plasticity RPCs; start the server with "
                           f"`plasticity serve`, or pass --worker-extension-cls {QUALNAME}")
    from vllm.utils.import_utils import resolve_obj_by_qualname

    cls = resolve_obj_by_qualname(qualname)
    if not (isinstance(cls, type) and issubclass(cls, WorkerExtension)):
        raise RuntimeError(f"plasticity: --worker-extension-cls {qualname} is not a subclass of {QUALNAME}")
