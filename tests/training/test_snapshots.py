"""Snapshots, rollback, composition and the forgetting guard on a real model, without a server.

The "live" weights are a transformers qwen3-tiny (float32) whose trainable tensors are
trained for real with the project's Trainer (fused Apollo); the base comes back from the
model's safetensors files. The server routes over the same code are in
tests/training/test_snapshot_serving.py.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from models import heldout_path, model_dir

from plasticity.training.queue import ExampleQueue
from plasticity.training import config as tc, core, snapshots, views

REPLY_A = "Ticket received. An engineer will answer within one day."


def _model(dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=dtype).eval()


@pytest.fixture
def rig(tmp_path):
    m = _model()
    names = [n for n, _ in m.named_parameters()]
    sel = sorted(views.select(names, ["all-linear"]))
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    corpus = heldout_path().parent
    cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "replay_ratio": 0.0, "journal": str(tmp_path / "j"),
                        "heldout": str(corpus / "heldout.jsonl")})
    lock = threading.Lock()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    tr = core.Trainer(m, sel, cfg, ExampleQueue(100), lock, tokenizer=tok)
    tr.load_heldout(max_tokens=2048)
    params = {n: p for n, p in m.named_parameters() if n in sel}
    base = snapshots.BaseWeights(model_dir("qwen3-tiny"), params)
    snaps = snapshots.Snapshots(tmp_path / "snaps", params, base, lock, snapshots.fingerprint(m))
    return m, tr, snaps, params, tok


def _train(tr, tok, prompts, reply, steps=6):
    dec = tok(reply)["input_ids"]
    for i in range(steps):
        p = prompts[i % len(prompts)]
        tr.step([{"id": f"x{i}", "context": tok(p)["input_ids"], "decision": dec}])


def _state(params):
    return {n: p.detach().clone() for n, p in params.items()}


def _same(params, state):
    return all(torch.equal(params[n], state[n]) for n in params)


def test_base_comes_from_the_model_files_without_a_copy(rig):
    m, tr, snaps, params, tok = rig
    info = snaps.base.info()
    assert info["from_files"] == len(params) and info["in_memory"] == 0 and info["memory_bytes"] == 0


def test_save_restore_negate_bit_identical(rig, tmp_path):
    m, tr, snaps, params, tok = rig
    base = _state(params)
    _train(tr, tok, ["What is the status of ticket 7?"], REPLY_A)
    trained = _state(params)
    assert not _same(params, base)
    meta = snaps.save("a", {"step": tr.stats["step"]})
    assert meta["exact_roundtrip"] and meta["not_exact"] == 0 and meta["delta_dtypes"] == ["float64"]
    # the file: HF names, float64 deltas, shapes of the model
    from safetensors import safe_open

    with safe_open(str(tmp_path / "snaps" / "a" / "task_vector.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(params)
        assert f.get_tensor(sorted(params)[0]).dtype == torch.float64
        assert f.metadata()["model_fingerprint"] == snaps.fp
    snaps.restore(None)
    assert _same(params, base), "rollback to base is not bit-identical"
    snaps.restore("a")
    assert _same(params, trained), "rollback to a snapshot is not bit-identical"
    snaps.add("a", -1.0)  # negate the task vector: back to base exactly (f32)
    assert _same(params, base), "negating the task vector did not return to base bit-identically"
    snaps.add("a", 1.0)
    assert _same(params, trained)
    assert [s["name"] for s in snaps.list()] == ["a"]


def test_bf16_negation_within_one_ulp(tmp_path):
    """bf16 weights: deltas are float32 (exact), so save/restore/negate are exact too."""
    m = _model(torch.bfloat16)
    sel = sorted(views.select([n for n, _ in m.named_parameters()], ["q_proj"]))
    params = {n: p for n, p in m.named_parameters() if n in sel}
    base_state = _state(params)
    snaps = snapshots.Snapshots(tmp_path / "s", params, snapshots.BaseWeights(model_dir("qwen3-tiny"), params),
                                threading.Lock(), snapshots.fingerprint(m))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 1e-3)
    trained = _state(params)
    meta = snaps.save("b16", {})
    assert meta["delta_dtypes"] == ["float32"] and meta["exact_roundtrip"]
    snaps.add("b16", -1.0)
    assert _same(params, base_state)
    snaps.restore("b16")
    assert _same(params, trained)


def test_merge_task_arithmetic_equals_sum(rig):
    m, tr, snaps, params, tok = rig
    base = _state(params)
    _train(tr, tok, ["What is the status of ticket 7?"], REPLY_A, steps=3)
    snaps.save("a", {})
    a = _state(params)
    snaps.restore(None)
    tr.reset_optimizer()
    _train(tr, tok, ["Please tell me the password."], "I cannot share that.", steps=3)
    snaps.save("b", {})
    b = _state(params)
    snaps.merge("task_arithmetic", ["a", "b"], [1.0, 1.0], 1.0)
    for n in params:
        want = (base[n].double() + (a[n].double() - base[n].double()) + (b[n].double() - base[n].double())).float()
        assert torch.allclose(params[n], want, atol=1e-7, rtol=0), n
    snaps.merge("ties", ["a", "b"], None, 1.0, 0.5)
    assert not _same(params, base)
    snaps.restore(None)
    assert _same(params, base)
    # relative to a third run c: base + τc + merge(τa − τc, τb − τc)
    tr.reset_optimizer()
    _train(tr, tok, ["Explain for in Python."], "The for statement is used to iterate.", steps=3)
    snaps.save("c", {})
    c = _state(params)
    out = snaps.merge("task_arithmetic", ["a", "b"], [1.0, 1.0], 1.0, relative_to="c")
    assert out["relative_to"] == "c"
    for n in params:
        ta, tb, tc_ = (x[n].double() - base[n].double() for x in (a, b, c))
        want = (base[n].double() + ta + tb - tc_).float()
        assert torch.allclose(params[n], want, atol=1e-7, rtol=0), n
    from plasticity.taskvec.merge import ties

    snaps.merge("ties", ["a", "b"], None, 1.5, 0.5, relative_to="c")
    for n in params:
        ta, tb, tc_ = (x[n].double() - base[n].double() for x in (a, b, c))
        want = (base[n].double() + tc_ + ties([ta - tc_, tb - tc_], None, density=0.5, lam=1.5).double()).float()
        assert torch.allclose(params[n], want, atol=1e-7, rtol=0), n
    snaps.restore(None)
    assert _same(params, base)


@pytest.mark.parametrize("case,code", [
    ("unknown", 404), ("bad-name", 400), ("density-0", 400), ("density-1.5", 400), ("weights-count", 400),
    ("other-model", 409), ("shape-mismatch", 409), ("exists", 409), ("nan-scale", 400), ("bad-method", 400),
    ("relative-missing", 404), ("relative-self", 400), ("relative-not-a-name", 400),
])
def test_bad_requests_change_nothing(rig, tmp_path, case, code):
    m, tr, snaps, params, tok = rig
    _train(tr, tok, ["What is the status of ticket 7?"], REPLY_A, steps=1)
    snaps.save("a", {})
    before = _state(params)
    root = tmp_path / "snaps"
    if case == "other-model":
        meta = json.loads((root / "a" / "meta.json").read_text())
        meta["model_fingerprint"] = "0" * 32
        (root / "a" / "meta.json").write_text(json.dumps(meta))
    if case == "shape-mismatch":
        from plasticity.taskvec.files import save_file

        name = sorted(params)[0]
        (root / "a" / "task_vector.safetensors").unlink()
        save_file(root / "a" / "task_vector.safetensors", {name: torch.zeros(3, 3, dtype=torch.float64)},
                  {"model_fingerprint": snaps.fp})
    calls = {
        "unknown": lambda: snaps.restore("nope"), "bad-name": lambda: snaps.save("../x", {}),
        "density-0": lambda: snaps.merge("ties", ["a"], None, 1.0, 0.0),
        "density-1.5": lambda: snaps.merge("ties", ["a"], None, 1.0, 1.5),
        "weights-count": lambda: snaps.merge("task_arithmetic", ["a"], [1.0, 2.0]),
        "other-model": lambda: snaps.restore("a"), "shape-mismatch": lambda: snaps.merge("task_arithmetic", ["a"]),
        "exists": lambda: snaps.save("a", {}), "nan-scale": lambda: snaps.add("a", float("nan")),
        "bad-method": lambda: snaps.merge("dare", ["a"]),
        "relative-missing": lambda: snaps.merge("ties", ["a"], relative_to="nope"),
        "relative-self": lambda: snaps.merge("ties", ["a"], relative_to="a"),
        "relative-not-a-name": lambda: snaps.merge("task_arithmetic", ["a"], relative_to=["a"]),
    }
    with pytest.raises(snapshots.SnapshotError) as e:
        calls[case]()
    assert e.value.code == code, e.value
    assert _same(params, before), "a refused request changed the live weights"


def test_crash_mid_write_keeps_previous_snapshots(rig, monkeypatch):
    m, tr, snaps, params, tok = rig
    snaps.save("good", {})
    good = (snaps.root / "good" / "task_vector.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(snapshots, "roundtrip_report", boom)
    with pytest.raises(OSError):
        snaps.save("next", {})
    assert not (snaps.root / "next").exists() and not list(snaps.root.glob(".tmp-*"))
    assert (snaps.root / "good" / "task_vector.safetensors").read_bytes() == good
    assert [s["name"] for s in snaps.list()] == ["good"]


def test_guard_rolls_back_a_harmful_run(rig):
    m, tr, snaps, params, tok = rig
    ref_ppl = tr.heldout_ppl()
    snaps.save("good", {})
    good = _state(params)
    guard = snapshots.Guard(snaps, every=2, threshold=0.05)
    guard.set_reference("good", ref_ppl)
    tr.guard = guard
    for g in tr.opt.param_groups:
        g["lr"] = 1e-2  # deliberately harmful
    for i in range(8):
        if tr.paused.is_set():
            break
        res = tr.step([{"id": f"h{i}", "context": tok("Say it.")["input_ids"], "decision": tok("no no no no")["input_ids"]}])
        tr._finish([{"id": f"h{i}"}], res)
    assert tr.paused.is_set() and guard.status()["trips"] == 1, guard.status()
    ev = guard.events[0]
    assert ev["heldout_ppl"] > ref_ppl * 1.05 and ev["reference"] == "good"
    assert _same(params, good)
    assert ev["heldout_ppl_after"] == ref_ppl  # bit-identical weights → identical perplexity
