"""The context-frozen experiment compares two losses through the same Trainer: the choice must reach
the step. (It once did not: a patched module attribute that the Trainer no longer read made
"full backprop" run context-frozen, and both rows came out identical to the last digit.)"""

from __future__ import annotations

import torch

from models import heldout_path, model_dir

from plasticity.experiments import common as C
from plasticity.training import core


def test_full_backprop_is_what_the_trainer_runs_when_asked():
    torch.set_num_threads(1)
    corpus = heldout_path().parent
    rig = C.Rig(model_dir("qwen3-tiny"), heldout=corpus / "heldout.jsonl", replay=corpus / "train.txt",
                heldout_tokens=256)
    text = (corpus / "train.txt").read_text()[:4000]
    ex = rig.encode(text, "Ticket received. An engineer will answer within one day.")
    ex.context = ex.context[:300]
    out = {}
    for mode, fn in (("frozen", None), ("full", core.full_loss)):
        rig.reset()
        tr = rig.trainer(lr=1e-3, rank=32, replay_ratio=0.0, item_loss=fn)
        t = rig.teach(tr, [ex], 1)
        out[mode] = dict(loss=t["loss_first"], act=t["activation_bytes_peak"],
                         w={n: p.detach().clone() for n, p in rig.params.items()})
    rig.reset()
    rig.release()
    # the same loss value (one forward of the same tokens) ...
    assert abs(out["frozen"]["loss"] - out["full"]["loss"]) < 1e-4, out
    # ... but full backprop keeps the context's activations for backward and moves the weights differently
    assert out["full"]["act"] > 3 * out["frozen"]["act"], (out["full"]["act"], out["frozen"]["act"])
    diff = max(float((out["full"]["w"][n] - out["frozen"]["w"][n]).abs().max()) for n in out["full"]["w"])
    assert diff > 1e-6
