"""Test-only worker RPCs, mixed into the server under test with ``--worker-extension-cls``.

``tests/vllm_server.py`` names ``WorkerExtensionForTests`` for every plasticity server it starts
and puts this folder on the workers' ``PYTHONPATH``. These hooks read or change the live
weights directly, so they never ship in the production extension class.
"""

from __future__ import annotations

import torch

from plasticity.vllm.extension import WorkerExtension
from plasticity.vllm.training import LOCK, rpc

QUALNAME = "worker_test_extension.WorkerExtensionForTests"


def selfcheck(st, ids):
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


def scale_param(st, name, factor):
    """Test hook: multiply one live tensor in place (under the lock)."""
    with LOCK, torch.no_grad():
        st.live[name].mul_(float(factor))
    st.trainer._bump()
    return {"name": name}


def digest(st, pattern=""):
    """Test hook: float64 sum and abs-sum of each trainable tensor whose name contains ``pattern``."""
    import hashlib

    params = dict(st.model.named_parameters())
    with LOCK, torch.no_grad():
        d = {n: [float(params[n].double().sum()), float(params[n].double().abs().sum())]
             for n in st.trainer.trainable if pattern in n}
        h = hashlib.sha256()
        for n in sorted(d):
            h.update(params[n].detach().contiguous().view(torch.uint8).numpy().tobytes())
        return {"digest": d, "sha256": h.hexdigest()}


class WorkerExtensionForTests(WorkerExtension):
    plasticity_train_selfcheck = rpc(selfcheck)
    plasticity_train_scale_param = rpc(scale_param)
    plasticity_train_digest = rpc(digest)
