#!/usr/bin/env python3
"""Peak gradient memory of one training step: fused Apollo vs step() Apollo vs AdamW.

Runs a forward/backward/step of the locally built Qwen3 test model (or any HF
model folder) and records, at every post-accumulate-grad event, the bytes of
all gradients alive at that moment. In fused mode each parameter is stepped and
its gradient freed as soon as it is complete, so the peak is one parameter's
gradient; otherwise it is the whole model's. Optimizer state bytes are listed
beside it.

Usage: python scripts/bench_fused_memory.py [--model DIR] [--rank 32]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def live_grad_bytes(model) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


def measure(model_dir: pathlib.Path, kind: str, rank: int) -> dict:
    import transformers

    from plasticity import Apollo

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    peak = {"bytes": 0}

    def watch(_p):
        peak["bytes"] = max(peak["bytes"], live_grad_bytes(model))

    # Hooks run in registration order: the watcher goes first, so it sees each
    # gradient the moment it is complete, before a fused step frees it.
    hooks = [p.register_post_accumulate_grad_hook(watch) for p in params]
    if kind == "apollo-fused":
        opt = Apollo(params, lr=1e-4, rank=rank, fused=True)
    elif kind == "apollo":
        opt = Apollo(params, lr=1e-4, rank=rank)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # second step: state exists, as in steady training
        model(input_ids=x, labels=x).loss.backward()
        peak["bytes"] = max(peak["bytes"], live_grad_bytes(model))  # before step(): all grads alive if not fused
        opt.step()
        opt.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    state = sum(
        t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)
    )
    largest = max(p.numel() * p.element_size() for p in params)
    total = sum(p.numel() * p.element_size() for p in params)
    return dict(kind=kind, peak_grad_bytes=peak["bytes"], largest_param_bytes=largest, all_params_bytes=total,
                state_bytes=state)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(pathlib.Path.home() / ".cache/plasticity/models/qwen3-tiny"))
    ap.add_argument("--rank", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [measure(pathlib.Path(args.model), k, args.rank) for k in ("apollo-fused", "apollo", "adamw")]
    print("| optimizer | peak gradient bytes | largest parameter | all parameters | optimizer state |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['peak_grad_bytes']:,} | {r['largest_param_bytes']:,} | {r['all_params_bytes']:,} | "
              f"{r['state_bytes']:,} |")
    fused = rows[0]
    ok = fused["peak_grad_bytes"] <= fused["largest_param_bytes"]
    print(f"\nfused peak ≤ one parameter's gradient: {ok}; "
          f"{rows[1]['peak_grad_bytes'] / max(fused['peak_grad_bytes'], 1):.1f}× less than step() mode; "
          f"Apollo state is {rows[2]['state_bytes'] / max(rows[1]['state_bytes'], 1):.1f}× smaller than AdamW's")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
