"""The training loop without a server: journal durability + recovery, non-finite steps, the queue."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from models import model_dir

from plasticity.training import config as tc, core, views
from plasticity.training.queue import ExampleQueue


def test_train_queue_bounded_and_timeout():
    q = ExampleQueue(2)
    assert q.push({"a": 1}) and q.push(2) and not q.push(3)
    assert len(q) == 2 and q.pop(0.0) == {"a": 1} and q.pop(0.0) == 2
    assert q.pop(0.05) is None
    with pytest.raises(ValueError):
        q.pop(float("nan"))
    with pytest.raises(ValueError):
        ExampleQueue(0)


@pytest.fixture
def trainer(tmp_path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    names = [n for n, _ in m.named_parameters()]
    sel = views.select(names, ["all-linear"])
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "journal": str(tmp_path / "j.jsonl"),
                        "checkpoint_dir": str(tmp_path / "ck"), "checkpoint_every": 1, "replay_ratio": 0.0})
    return core.Trainer(m, sorted(sel), cfg, ExampleQueue(100), threading.Lock()), cfg, m


def _ex(i):
    return {"id": f"ex-{i}", "context": [5, 6, 7, 8 + i], "decision": [40, 41, 42]}


def test_non_finite_loss_skips_step_bit_identical(trainer):
    tr, cfg, m = trainer
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    w = m.model.norm.weight
    with torch.no_grad():
        saved = w.clone()
        w[0] = float("nan")  # NaN in a frozen weight -> non-finite loss
    res = tr.step([_ex(0)])
    with torch.no_grad():
        w.copy_(saved)
    assert res["skipped"] and tr.stats["skipped_steps"] == 1
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n  # bit-identical


def test_non_finite_gradient_skips_remaining_params(trainer):
    tr, cfg, m = trainer
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    # A gradient hook poisons the *first* gradient that backward produces (lm_head side: last layer's
    # down_proj); every parameter is then left bit-identical (the first one by Apollo's own check).
    first = dict(m.named_parameters())[tr.trainable[-1]]
    last_layer = [p for n, p in m.named_parameters() if n in tr.trainable and ".layers.3.mlp.down_proj" in n][0]
    h = last_layer.register_hook(lambda g: g * float("nan"))
    res = tr.step([_ex(1)])
    h.remove()
    assert res["skipped"] and res["updated_params"] == 0
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def _state_copy(opt):
    return {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
            for g in opt.param_groups for p in g["params"]}


def _poison_mid_backward(tr, m):
    """A hook that makes layer 1's down_proj gradient NaN: backward reaches it after layers 3 and 2
    (and their parameters) have already stepped."""
    mid = [p for n, p in m.named_parameters() if n in tr.trainable and ".layers.1.mlp.down_proj" in n][0]
    return mid.register_hook(lambda g: g * float("nan"))


def test_non_finite_gradient_mid_backward_rolls_back_stepped_params(trainer):
    tr, cfg, m = trainer
    tr.step([_ex(0)])  # a first clean step: moments are non-zero, so their restore is checked too
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    state = _state_copy(tr.opt)
    h = _poison_mid_backward(tr, m)
    res = tr.step([_ex(1)])
    h.remove()
    assert res["skipped"] and res["updated_params"] == 0
    assert res["rolled_back_params"] > 0  # later layers had stepped: the case that needs the undo log
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n  # bit-identical, stepped ones included
    after = _state_copy(tr.opt)
    for g in tr.opt.param_groups:
        for p in g["params"]:
            a, b = state[id(p)], after[id(p)]
            assert a.keys() == b.keys()
            for k in a:
                assert (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]), k
    assert tr.status()["undo_bytes_peak"] > 0


def test_rolled_back_step_leaves_no_trace(trainer, tmp_path):
    """The step after a rolled-back one gives the same weights as if the bad step never happened."""
    tr, cfg, m = trainer
    from transformers import AutoModelForCausalLM

    m2 = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    for n, p in m2.named_parameters():
        p.requires_grad_(n in tr.trainable)
    cfg2 = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "journal": str(tmp_path / "j2.jsonl"),
                         "replay_ratio": 0.0})
    tr2 = core.Trainer(m2, tr.trainable, cfg2, ExampleQueue(100), threading.Lock())
    h = _poison_mid_backward(tr, m)
    assert tr.step([_ex(1)])["skipped"]
    h.remove()
    tr.step([_ex(2)])
    tr2.step([_ex(2)])
    p2 = dict(m2.named_parameters())
    for n, p in m.named_parameters():
        assert torch.equal(p, p2[n]), n


def test_non_atomic_steps_leave_later_layers_stepped(tmp_path):
    """atomic_steps = false keeps the old, cheaper behaviour (no undo log): what the undo log fixes."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    sel = views.select([n for n, _ in m.named_parameters()], ["all-linear"])
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "journal": str(tmp_path / "j.jsonl"),
                        "replay_ratio": 0.0, "atomic_steps": False})
    tr = core.Trainer(m, sorted(sel), cfg, ExampleQueue(100), threading.Lock())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    h = _poison_mid_backward(tr, m)
    res = tr.step([_ex(1)])
    h.remove()
    assert res["skipped"] and res["updated_params"] > 0 and res["rolled_back_params"] == 0
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters())
    assert tr.status()["undo_bytes_peak"] == 0


class _CountingLock:
    """The serving lock, counting how often the optimizer takes it."""

    def __init__(self):
        self.inner, self.taken = threading.Lock(), 0

    def __enter__(self):
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc):
        self.inner.release()


def _tiny_trainer(tmp_path, name, lock, lock_batch_bytes):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    sel = views.select([n for n, _ in m.named_parameters()], ["all-linear"])
    for n, p in m.named_parameters():
        p.requires_grad_(n in sel)
    cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "journal": str(tmp_path / f"{name}.jsonl"),
                        "replay_ratio": 0.0})
    tr = core.Trainer(m, sorted(sel), cfg, ExampleQueue(100), lock)
    tr.opt.lock_batch_bytes = lock_batch_bytes
    return tr, m


def test_gradients_step_in_batches_under_one_lock_each(tmp_path):
    """A busy server's forward holds the lock: one acquisition per batch of gradients (not one per
    parameter) and the weights come out bit-identical to stepping each parameter on its own."""
    one_lock, batched_lock = _CountingLock(), _CountingLock()
    one, m1 = _tiny_trainer(tmp_path, "one", one_lock, 0)  # 0: every gradient is its own batch
    batched, m2 = _tiny_trainer(tmp_path, "batched", batched_lock, 2 << 20)  # a layer is 3 MiB
    for i in range(3):
        assert not one.step([_ex(i)])["skipped"] and not batched.step([_ex(i)])["skipped"]
    n = len(one.params)
    assert one_lock.taken == 3 * n and one.opt.lock_acquisitions == 3 * n
    assert 3 <= batched_lock.taken <= 3 * n // 4, (batched_lock.taken, n)
    p2 = dict(m2.named_parameters())
    for name, p in m1.named_parameters():
        assert torch.equal(p, p2[name]), name
    assert all(p.grad is None for p in one.params + batched.params)  # every gathered gradient freed
    st = batched.status()
    assert st["lock_acquisitions"] == batched_lock.taken and st["grad_bytes_bound"] > 2 << 20


def test_backward_that_raises_is_rolled_back(trainer):
    """A backward that raises half way (after some batches stepped) leaves the weights and the
    optimizer's moments as they were: the step failed, its examples will be retried."""
    tr, cfg, m = trainer
    tr.opt.lock_batch_bytes = 0  # later layers step before the error
    tr.step([_ex(0)])
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    state = _state_copy(tr.opt)
    mid = [p for n, p in m.named_parameters() if n in tr.trainable and ".layers.1.mlp.down_proj" in n][0]

    def boom(g):
        raise RuntimeError("out of memory (simulated)")

    h = mid.register_hook(boom)
    with pytest.raises(RuntimeError, match="simulated"):
        tr.step([_ex(1)])
    h.remove()
    assert tr.opt.rolled_back > 0  # the case that needs the undo log
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n
    after = _state_copy(tr.opt)
    for key, st in state.items():
        for k, v in st.items():
            assert (torch.equal(v, after[key][k]) if isinstance(v, torch.Tensor) else v == after[key][k]), k
    assert all(p.grad is None for p in tr.params)
    assert not tr.step([_ex(2)])["skipped"]  # and training goes on


def test_journal_recovery_trains_untrained_and_not_trained(trainer, tmp_path):
    tr, cfg, m = trainer
    acc = core.Journal(cfg.journal)
    acc.append([_ex(i) for i in range(5)])
    # examples 0..2 trained in one step, checkpointed
    tr.enqueue([_ex(i) for i in range(5)])
    batch = [tr.queue.pop(0.0) for _ in range(3)]
    res = tr.step(batch)
    tr._finish(batch, res)
    assert tr.stats["checkpoint_step"] == 1
    trained = {n: p.detach().clone() for n, p in zip(tr.trainable, tr.params)}
    # torn last line (a crash mid-append of an unacknowledged record) is ignored
    with open(cfg.journal, "ab") as f:
        f.write(b'{"id": "ex-torn", "cont')
    # "restart": fresh model from disk, fresh trainer, recover
    from transformers import AutoModelForCausalLM

    m2 = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
    for n, p in m2.named_parameters():
        p.requires_grad_(n in tr.trainable)
    tr2 = core.Trainer(m2, tr.trainable, cfg, ExampleQueue(100), threading.Lock())
    n = tr2.recover(cfg.journal)
    assert n == 2
    ids = sorted(x["id"] for x in tr2.queue.drain())
    assert ids == ["ex-3", "ex-4"]
    p2 = dict(m2.named_parameters())
    for name, t in trained.items():
        assert torch.equal(p2[name], t), name  # checkpoint restored into the live weights
    assert tr2.stats["step"] == 1
    done = [json.loads(l) for l in open(cfg.done_journal)]
    assert [d["id"] for d in done] == ["ex-0", "ex-1", "ex-2"]


def test_serving_duty_cycle_pause(trainer):
    """While serving is active, a step of dt is followed by dt·(1-d)/d of sleep; idle: only yield_ms."""
    import time

    tr, cfg, m = trainer
    assert cfg.serving_duty == 0.25 and cfg.yield_ms == 0.0
    assert tr.pause_after(0.2) == 0.0  # no serving side at all
    tr.last_serve = lambda: time.monotonic()
    assert tr.pause_after(0.2) == pytest.approx(0.6)
    tr.last_serve = lambda: time.monotonic() - 10.0  # served long ago: idle, train at full speed
    assert tr.pause_after(0.2) == 0.0
    tr.last_serve = lambda: None
    assert tr.pause_after(0.2) == 0.0


def test_heldout_eval_is_batched_and_yields_to_serving(trainer, monkeypatch):
    """The held-out evaluation runs EVAL_ROWS windows per forward (same perplexity as one window at a
    time) and, on the training thread, pauses after each chunk like a training step does."""
    tr, cfg, m = trainer
    g = torch.Generator().manual_seed(0)
    tr.heldout_ids = torch.randint(0, m.config.vocab_size, (core.EVAL_ROWS * 2 + 3, 32), generator=g)
    with torch.no_grad():
        nll = sum(torch.nn.functional.cross_entropy(m(input_ids=r[None]).logits[0, :-1].double(), r[1:],
                                                    reduction="sum").item() for r in tr.heldout_ids)
    one_at_a_time = float(torch.tensor(nll / (tr.heldout_ids.shape[0] * 31)).exp())
    pauses = []
    monkeypatch.setattr(tr, "_yield", lambda dt: pauses.append(dt))
    assert tr.heldout_ppl() == pytest.approx(one_at_a_time, rel=1e-5)
    assert pauses == []  # not the training thread: an operator's request is not duty-cycled
    tr.thread = threading.current_thread()
    try:
        assert tr.heldout_ppl() == pytest.approx(one_at_a_time, rel=1e-5)
    finally:
        tr.thread = None
    assert len(pauses) == 3 and all(dt > 0 for dt in pauses)  # 8 + 8 + 3 windows


def test_autocast_bf16_runs_the_passes_in_bf16_and_steps_float32_weights(tmp_path):
    """autocast = "bf16": the loss is computed with bf16 matmuls (it differs from float32's, so the
    option is not a no-op), is close to it, and the float32 weights step in float32."""
    from transformers import AutoModelForCausalLM

    losses, moved = {}, {}
    for mode in ("off", "bf16"):
        m = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype=torch.float32).eval()
        sel = sorted(views.select([n for n, _ in m.named_parameters()], ["all-linear"]))
        for n, p in m.named_parameters():
            p.requires_grad_(n in sel)
        before = {n: p.detach().clone() for n, p in m.named_parameters() if n in sel}
        cfg = tc.from_dict({"enabled": True, "lr": 1e-3, "rank": 8, "journal": str(tmp_path / f"{mode}.jsonl"),
                            "replay_ratio": 0.0, "autocast": mode})
        tr = core.Trainer(m, sel, cfg, ExampleQueue(10), threading.Lock())
        res = tr.step([_ex(i) for i in range(4)])
        assert not res["skipped"]
        losses[mode] = res["loss"]
        params = dict(m.named_parameters())
        assert all(params[n].dtype == torch.float32 for n in sel)
        moved[mode] = sum(not torch.equal(params[n], before[n]) for n in sel) / len(sel)
    assert losses["bf16"] != losses["off"]
    assert abs(losses["bf16"] - losses["off"]) < 0.02 * abs(losses["off"])
    assert moved["off"] == 1.0 and moved["bf16"] == 1.0
