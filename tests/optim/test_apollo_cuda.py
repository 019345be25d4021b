"""plasticity.Apollo on CUDA parameters (docs/gpu.md). The device-agnostic parts run here: the AdamW
step in torch ops (on CPU tensors) against the Rust AdamW, the device state's sync into
``state_dict``, and the refusal where the kernels cannot run. The comparison with the CPU step on a
GPU is shared with scripts/gpu_check.sh and skips without CUDA."""

import importlib.util
import io
from pathlib import Path

import pytest
import torch

from plasticity import Apollo
from plasticity import _plasticity as rs
from plasticity import optim

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-3), (torch.float16, 1e-3)])
def test_device_adamw_in_torch_ops_matches_the_rust_adamw(dtype, tol):
    # The AdamW half of the CUDA path is torch ops, so it runs on CPU tensors as well.
    g0 = torch.Generator().manual_seed(0)
    w0 = (torch.randn(300, generator=g0) * 0.05).to(dtype)
    ref, dev = w0.clone(), w0.clone()
    group = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1, correct_bias=True)
    ws = rs.Workspace(1)
    m1, m2, st, step = torch.zeros(300), torch.zeros(300), {}, 0
    for t in range(60):
        grad = (torch.randn(300, generator=g0) * 0.01).to(dtype)
        if t == 17:
            grad[5] = float("inf")
        before = dev.clone()
        applied, step = rs.adamw_step(ref, grad, m1, m2, step=step, seed=1, lr=1e-2, beta1=0.9, beta2=0.999,
                                      eps=1e-6, weight_decay=0.1, correct_bias=True, stochastic_rounding=False,
                                      workspace=ws)
        optim._adamw_on_device(dev, grad, st, group, 0.9, 0.999)
        if not applied:
            assert torch.equal(dev.view(torch.int16 if dtype != torch.float32 else torch.int32),
                               before.view(torch.int16 if dtype != torch.float32 else torch.int32)), "skip wrote"
        err = float((dev.float() - ref.float()).norm() / ref.float().norm())
        assert err <= tol, f"step {t}: {err:.2e}"
    assert int(st["_step_t"].item()) == step == 59
    assert int(st["_skipped_t"].item()) == 1
    assert float((st["exp_avg"] - m1).abs().max()) < 1e-6


def test_device_state_is_synced_into_state_dict_and_never_saved():
    p = torch.nn.Parameter(torch.randn(64, 48))
    q = torch.nn.Parameter(torch.randn(10))
    opt = Apollo([p, q], lr=1e-3, rank=8)
    handle = rs.CudaApollo(64, 48, 8, "float32", 0, 7)  # no device needed until its first step
    handle.set_state(7, 2.5, 1)
    opt.state[p]["_cuda"] = handle
    opt.state[q]["_step_t"] = torch.tensor(5.0, dtype=torch.float64)
    opt.state[q]["_skipped_t"] = torch.tensor(2)
    sd = opt.state_dict()
    assert (opt.state[p]["step"], opt.state[p]["prev_norm"], opt.state[p]["skipped"]) == (7, 2.5, 1)
    assert (opt.state[q]["step"], opt.state[q]["skipped"]) == (5, 2)
    assert opt.skipped == 3
    assert all(k not in st for st in sd["state"].values() for k in optim._DEVICE_KEYS)
    assert "_cuda" in opt.state[p], "the live handle stays"
    torch.save(sd, io.BytesIO())  # picklable
    opt.sync_device_state()
    assert opt.skipped == 3, "a second sync counts nothing twice"


def test_cuda_parameters_are_refused_clearly_where_the_kernels_cannot_run(monkeypatch):
    from plasticity import cuda

    p = torch.nn.Parameter(torch.randn(64, 48))
    p.grad = torch.randn(64, 48)
    opt = Apollo([p], lr=1e-3, rank=8)
    monkeypatch.setattr(cuda, "kernels_ready", lambda ordinal: "CUDA driver library (libcuda) not found")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match="Apollo on cpu needs plasticity's CUDA kernels.*libcuda"):
        opt._step_param_cuda(p, p.grad, opt.param_groups[0], opt.state[p])


def test_stochastic_rounding_is_refused_for_cuda_parameters(monkeypatch):
    from plasticity import cuda

    p = torch.nn.Parameter(torch.randn(64, 48).bfloat16())
    opt = Apollo([p], lr=1e-3, rank=8, stochastic_rounding=True)
    monkeypatch.setattr(cuda, "kernels_ready", lambda ordinal: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ValueError, match="stochastic_rounding is not available for CUDA"):
        opt._step_param_cuda(p, torch.zeros_like(p), opt.param_groups[0], opt.state[p])


# ---- on a GPU (scripts/gpu_check.sh runs the same comparison) ----
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
def test_cuda_apollo_tracks_the_cpu_apollo_over_400_steps(dtype, tol):
    r = _gpu_check().apollo_cpu_vs_cuda(dtype)
    assert r["worst"] <= tol, r["errors"]
    assert r["skipped"][0] == r["skipped"][1] == 2
    assert r["steps"][0] == r["steps"][1]


@needs_cuda
def test_cuda_apollo_mini_tracks_the_cpu():
    r = _gpu_check().apollo_cpu_vs_cuda(torch.float32, steps=200, rank=1, scale_type="tensor")
    assert r["worst"] <= 1e-5, r["errors"]


@needs_cuda
def test_cuda_state_dict_continues_on_the_cpu():
    r = _gpu_check().apollo_cpu_vs_cuda(torch.float32, steps=120)
    oc, og = r["optimizers"]
    cpu, gpu = r["params"]
    sd = og.state_dict()
    moved = [torch.nn.Parameter(p.detach().cpu()) for p in gpu]
    o2 = Apollo(moved, lr=1e-3, rank=16, weight_decay=0.01, update_proj_gap=50, projection_precision="f32", seed=3)
    o2.load_state_dict({"state": {k: {kk: (vv.cpu() if torch.is_tensor(vv) else vv) for kk, vv in v.items()}
                                  for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]})
    for p, q in zip(cpu, moved):
        assert o2.state[q]["step"] == oc.state[p]["step"]
        want = oc.state[p].get("prev_norm")
        if want is None:
            assert o2.state[q].get("prev_norm") is None
        else:
            assert o2.state[q]["prev_norm"] == pytest.approx(want, rel=1e-4)
