"""One rank of tests/training/test_training_tensor_parallel.py: the rank's sharded transformers view
of qwen3-tiny (training/tensor_parallel.py) in a real gloo group, against the whole model in the
same process: the context-frozen loss, every shard's gradient, and 20 Apollo steps.

usage: tp_view_worker.py RANK WORLD INIT_FILE MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import json
import os
import random
import sys

import torch
import torch.distributed as dist

from plasticity import Apollo
from plasticity.training import tensor_parallel as tpv
from plasticity.training.loss import frozen_context_loss_batch
from plasticity.training.views import select

STEPS = 20


def examples(vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randrange(2, 12))],
             [rng.randrange(vocab) for _ in range(rng.randrange(1, 8))]) for _ in range(4)]


def optimizer(params, names, shard=None):
    opt = Apollo([params[n] for n in names], lr=2e-3, rank=8, update_proj_gap=5, projection_precision="f32",
                 threads=1, seed=7)
    if shard is not None:
        rank, world, group = shard
        for n in names:
            spec = tpv.shard_of(n, tuple(params[n].shape), rank, world)
            if spec is not None:
                axis, offset, global_shape = spec
                opt.shard(params[n], axis=axis, offset=offset, global_shape=global_shape, group=group)
    return opt


def run(rank: int, world: int, model_dir: str) -> dict:
    from transformers import AutoModelForCausalLM

    group = dist.new_group(list(range(world)), backend="gloo")  # the trainer's own group
    torch.manual_seed(0)
    full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = full.config
    local = AutoModelForCausalLM.from_config(tpv.local_config(cfg, world)).eval()
    local.load_state_dict(tpv.shard_state_dict(full.state_dict(), cfg, rank, world), strict=True)
    tpv.parallelize(local, cfg.vocab_size, group)
    out: dict = {}

    # 1. the loss and every shard's gradient
    items = examples(cfg.vocab_size, 1)
    loss_full, _ = frozen_context_loss_batch(full, items)
    loss_full.backward()
    tpv.sent_bytes = 0
    loss_local, ntok = frozen_context_loss_batch(local, items)
    loss_local.backward()
    out["bytes_per_step"] = tpv.sent_bytes
    out["tokens"] = ntok
    out["loss"] = [float(loss_full.detach()), float(loss_local.detach())]
    fgrads = tpv.shard_state_dict({n: p.grad for n, p in full.named_parameters()}, cfg, rank, world)
    errs = {}
    for n, p in local.named_parameters():
        if n == "lm_head.weight":
            continue  # tied to the embedding
        want = fgrads["model.embed_tokens.weight" if n.endswith("embed_tokens.weight") else n]
        errs[n] = float((p.grad - want).norm() / max(float(want.norm()), 1e-30))
    out["grad_rel_err"] = errs

    # 2. twenty Apollo steps on the linear layers, whole vs sharded
    for m in (full, local):
        m.zero_grad(set_to_none=True)
    fp, lp = dict(full.named_parameters()), dict(local.named_parameters())
    names = sorted(select(list(fp), ["all-linear"]))
    start = {n: fp[n].detach().clone() for n in names}
    fopt, lopt = optimizer(fp, names), optimizer(lp, names, (rank, world, group))
    for t in range(STEPS):
        batch = examples(cfg.vocab_size, 100 + t)
        for m, opt in ((full, fopt), (local, lopt)):
            loss, _ = frozen_context_loss_batch(m, batch)
            loss.backward()
            opt.step()
            m.zero_grad(set_to_none=True)
    want = tpv.shard_state_dict({n: fp[n].detach() for n in names}, cfg, rank, world)
    began = tpv.shard_state_dict(start, cfg, rank, world)
    out["err2"] = sum(float(((lp[n].detach() - want[n]) ** 2).sum()) for n in names)
    out["upd2"] = sum(float(((want[n] - began[n]) ** 2).sum()) for n in names)
    out["apollo_bytes_per_step"] = lopt.reduced_bytes / STEPS
    return out


if __name__ == "__main__":
    rank, world, init, model_dir, dest = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    res = run(rank, world, model_dir)
    dist.barrier()
    with open(dest, "w") as f:
        json.dump(res, f)
    sys.stdout.flush()
    os._exit(0)  # gloo's file-store teardown can abort after the results are written (see apollo_shard_worker.py)
