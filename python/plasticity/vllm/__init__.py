"""The ``vllm.general_plugins`` entry point: loaded by vLLM in every process.

In the worker it patches (before the model exists, docs/design/vllm-hooks.md §1):
- ``Worker.load_model``: after loading, allocate the steering buffers and hook
  the decoder layers (``state.SteeringState``);
- the model runner, to rewrite the token→slot index before each forward
  (V1: ``runner_v1``, used by the CPU build; V2: ``runner_v2``, unverified);
- with ``[training] enabled``: the linear layers' weight post-processing (weights stay plain)
  and the runner's forward (the training lock).
The RPC methods the API server reaches with ``collective_rpc`` are not patched in: they are the
worker extension class ``extension.WorkerExtension``, named by ``--worker-extension-cls``.
Everything is idempotent (vLLM may call ``register`` more than once).
"""

from __future__ import annotations

import logging

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it
_DONE = False


def register() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    from plasticity.steering import torch_op

    torch_op.register()
    try:
        from . import worker
    except ImportError as e:  # a vLLM without the V1 worker: nothing to hook
        log.warning("plasticity: worker hooks not installed (%s)", e)
        return
    worker.install()
