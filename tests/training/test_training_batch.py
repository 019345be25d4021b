"""The batched context-frozen loss is the mean of the per-example losses, gradients included
(padding is masked out of attention and of the loss), for prefixes of any length, 0 included."""

from __future__ import annotations

import pytest
import torch

from models import model_dir
from plasticity.training import core


@pytest.mark.parametrize("name", ["qwen3-tiny"])  # SmolLM2 agrees too (1e-13 in float64), but costs 90 s
def test_batched_loss_and_gradients_equal_one_by_one(name):
    from transformers import AutoModelForCausalLM

    # float64: the batched GEMMs sum in another order, so float32 agrees only to ~3e-4 relative on
    # some tensors (SmolLM2's layer norms); in float64 anything but rounding would show
    m = AutoModelForCausalLM.from_pretrained(model_dir(name), dtype=torch.float64).eval()
    assert core.batchable(m)
    g = torch.Generator().manual_seed(0)
    V = m.config.vocab_size
    items = [(torch.randint(5, V - 1, (n,), generator=g).tolist(), torch.randint(5, V - 1, (k,), generator=g).tolist())
             for n, k in [(1, 3), (7, 5), (20, 1), (48, 32), (3, 9)]]
    params = [p for p in m.parameters() if p.requires_grad]

    def run(fn):
        m.zero_grad()
        loss = fn()
        loss.backward()
        return float(loss), [p.grad.clone() for p in params]

    l1, g1 = run(lambda: torch.stack([core.frozen_context_loss(m, c, d)[0] for c, d in items]).mean())
    l2, g2 = run(lambda: core.frozen_context_loss_batch(m, items)[0])
    # (the cross-entropy itself runs in float32 on both paths)
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    worst = max(float((a - b).norm() / (a.norm() + 1e-30)) for a, b in zip(g1, g2))
    assert worst <= 1e-6, worst


def test_hybrid_models_go_one_by_one():
    from transformers import AutoConfig

    class M:
        config = AutoConfig.from_pretrained(model_dir("qwen3_5-tiny"))

    assert not core.batchable(M())
