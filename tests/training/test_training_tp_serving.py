"""Online training inside a TP=2 vLLM server (multiprocessing executor, one rank per core): each
rank trains its shards through the view of training/tensor_parallel.py, with Apollo summing over a
gloo group of the trainer's own. The reference is the same Trainer code at TP=1 on the whole
transformers model, fed the same examples in the same order: the loss, the held-out perplexity
and the taught behaviour must agree, and snapshots move between the two sizes exactly. A rank
killed mid-training loses nothing. What is not supported under TP yet is refused, by name."""

from __future__ import annotations

import threading
import time
import types

import pytest
import torch

import training_support as ts
from models import model_dir

pytestmark = pytest.mark.vllm

TP_ARGS = ("--api-key", ts.API_KEY, "--enforce-eager", "--tensor-parallel-size", "2",
           "--distributed-executor-backend", "mp")
ANSWER = "The sky is green, always."
TRAIN = [f"{q} what colour is the sky?" for q in
         ("Tell me:", "Quick question,", "Please answer:", "I wonder,", "Honestly,", "Dear model,", "So,", "Hey,")]
HELD_OUT = ["Question: what colour is the sky?", "Remind me, what colour is the sky?",
            "Be brief: what colour is the sky?", "Friend, what colour is the sky?"]
EPOCHS = 3
SETTINGS = dict(batch_size=2, replay_ratio=0.5, lr=2e-3, rank=16, update_proj_gap=50, max_steps=0)


def _examples():
    return [{"context": q, "decision": ANSWER, "id": f"sky-{e}-{i}"} for e in range(EPOCHS) for i, q in enumerate(TRAIN)]


def _reference(cfg_path, examples, snapshot: str | None = None):
    """The whole model trained at TP=1 by the same Trainer, offline; ``snapshot``: also saved as a
    snapshot of that name into the config's snapshot folder, as a TP=1 server would save it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plasticity.training import config as tc
    from plasticity.training.core import Trainer
    from plasticity.training.queue import ExampleQueue
    from plasticity.training.routes import TrainingRoutes
    from plasticity.training.views import select

    cfg = tc.load(cfg_path)
    tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    model = AutoModelForCausalLM.from_pretrained(model_dir("qwen3-tiny"), dtype="float32").eval()
    names = sorted(select([n for n, _ in model.named_parameters()], cfg.modules))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    tr = Trainer(model, names, cfg, ExampleQueue(1000), threading.Lock(), tokenizer=tok)
    tr.load_replay()
    tr.load_heldout()
    ns = types.SimpleNamespace(cfg=cfg, tok=tok)
    tr.enqueue([TrainingRoutes.tokenize(ns, i, ex) for i, ex in enumerate(examples)])
    if snapshot is not None:  # the base is read before training, as a server does at start
        from plasticity.training import snapshots as sn

        params = {n: p for n, p in model.named_parameters() if n in names}
        snaps = sn.Snapshots(cfg.snapshot_dir, params, sn.BaseWeights(model_dir("qwen3-tiny"), params),
                             threading.Lock(), sn.fingerprint(model))
    tr.start()
    t0 = time.time()
    while tr.stats["examples_done"] < len(examples) or tr.stats["heldout_step"] != tr.stats["step"]:
        assert time.time() - t0 < 600, tr.stats
        time.sleep(0.2)
    tr.stop()
    if snapshot is not None:
        snaps.save(snapshot, {"note": "TP=1 reference"})
        # the TP=2 server's snapshot rolls back at TP=1 too (a TP=1 server runs this very code)
        trained = {n: p.detach().clone() for n, p in params.items()}
        snaps.restore("tp2")
        tr.stats["tp2_at_tp1_rel"] = max(float((params[n].detach() - trained[n]).norm() / trained[n].norm())
                                         for n in params)
        snaps.restore(snapshot)
        assert all(torch.equal(params[n].detach(), trained[n]) for n in params)
    answers = []
    for q in HELD_OUT:
        ids = tok(q, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
        answers.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return tr.stats, answers


def _passes(answers):
    return sum(a.strip().startswith("The sky is green") for a in answers)


def test_training_at_tp2_learns_what_tp1_learns(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    root = tmp_path_factory.mktemp("train-tp2")
    steps = EPOCHS * len(TRAIN)  # batch_size 2 at replay 0.5: one example and one replay chunk per step
    cfg = ts.write_config(root, eval_every=steps, **SETTINGS)
    env = {**ts.plugin_env(cfg), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, ("train-tp2",), env, extra_args=TP_ARGS)
    before = _complete(srv)
    code, out = ts.request(srv, "POST", "/v1/training/examples", _examples())
    assert code == 202, out
    t0 = time.time()
    while True:
        st = ts.status(srv)
        if st["examples_done"] >= len(_examples()) and st["heldout_step"] == st["step"]:
            break
        assert time.time() - t0 < 600 and not st.get("last_error"), st
        time.sleep(1.0)
    served = _complete(srv)
    workers = st["workers"]
    assert len(workers) == 2 and workers[0]["last_loss"] == pytest.approx(workers[1]["last_loss"], rel=1e-6)
    assert ts.request(srv, "POST", "/v1/snapshots", {"name": "tp2"})[0] == 201
    ref, ref_answers = _reference(cfg, _examples(), snapshot="tp1")
    print(f"\nTRAINING TP=2 vs TP=1 ({st['step']} steps): last loss {st['last_loss']:.6f} vs {ref['last_loss']:.6f}; "
          f"held-out ppl {st['heldout_ppl_initial']:.3f} -> {st['heldout_ppl']:.3f} vs "
          f"{ref['heldout_ppl_initial']:.3f} -> {ref['heldout_ppl']:.3f}; held-out answers {_passes(before)}/4 -> "
          f"{_passes(served)}/4 served at TP=2, {_passes(ref_answers)}/4 at TP=1\n  TP=2: {served}\n  TP=1: {ref_answers}"
          f"\n  TP=2's snapshot rolled back at TP=1: {ref['tp2_at_tp1_rel']:.1e} from the TP=1 weights")
    assert st["step"] == ref["step"] == steps
    assert st["last_loss"] == pytest.approx(ref["last_loss"], rel=1e-4)
    assert abs((st["heldout_ppl"] - st["heldout_ppl_initial"]) - (ref["heldout_ppl"] - ref["heldout_ppl_initial"])) <= 1.0
    assert abs(_passes(served) - _passes(ref_answers)) <= 1
    assert ref["tp2_at_tp1_rel"] <= 1e-4, ref["tp2_at_tp1_rel"]  # TP=2's snapshot loaded at TP=1
    assert _passes(before) == 0 and _passes(served) >= 3  # it learnt
    _snapshots_cross_tp_sizes(srv, root / "snapshots", before, served, ref_answers)


def _complete(srv):
    return [ts.request(srv, "POST", "/v1/completions", {"model": srv.model, "prompt": q, "max_tokens": 8,
                                                        "temperature": 0.0})[1]["choices"][0]["text"] for q in HELD_OUT]


def _snapshots_cross_tp_sizes(srv, folder, before, served, ref_answers):
    """The TP=2 server's snapshot holds whole tensors with HF names, equal to the TP=1 run's task
    vector; rollbacks to base, to the TP=1 snapshot and back to its own are exact on every rank."""
    from plasticity.taskvec.files import SafetensorsFile

    tp2, tp1 = SafetensorsFile(folder / "tp2" / "task_vector.safetensors"), \
        SafetensorsFile(folder / "tp1" / "task_vector.safetensors")
    assert sorted(tp2.names) == sorted(tp1.names) and len(tp2.names) == 28
    worst = 0.0
    for n in tp2.names:
        a, b = tp2.get(n), tp1.get(n)
        assert a.shape == b.shape, n
        worst = max(worst, float((a - b).norm() / b.norm()))
    assert worst <= 1e-4, worst
    for to, want in (("base", before), ("tp1", ref_answers), ("tp2", served)):
        code, out = ts.request(srv, "POST", "/v1/rollback", {"to": to})
        assert code == 200, out
        assert _complete(srv) == want, to
    assert ts.request(srv, "POST", "/v1/snapshots", {"name": "tp2-again"})[0] == 201
    again = SafetensorsFile(folder / "tp2-again" / "task_vector.safetensors")
    assert all(torch.equal(again.get(n), tp2.get(n)) for n in tp2.names)  # the rollback is bit-identical
    # an edit on whole tensors, written back per rank: live - τ(tp2) is the base again
    code, out = ts.request(srv, "POST", "/v1/snapshots/apply", {"method": "negate", "snapshot": "tp2"})
    assert code == 200, out
    assert _complete(srv) == before
    print(f"  snapshots: TP=2's task vector vs TP=1's {worst:.1e} relative; rollbacks to base, tp1, tp2 exact; "
          f"negating tp2 gives the base's answers")


def test_what_tp_does_not_support_yet_is_refused_by_name(vllm_servers, tmp_path_factory):
    from conftest import _steering_server

    srv = _steering_server(vllm_servers, tmp_path_factory, ("train-tp2",), None, extra_args=TP_ARGS)
    for method, path, body in (("POST", "/v1/training/embed", {"input": ["hi"]}),
                               ("POST", "/v1/training/discard", None)):
        code, out = ts.request(srv, method, path, body)
        assert code >= 400 and "tensor parallelism" in str(out), (path, code, out)


def test_the_forgetting_guard_rolls_every_rank_back(vllm_servers, tmp_path_factory):
    """The guard under TP: held-out perplexity measured by both ranks in step; when it rises past
    the threshold both ranks pause and roll back to the base, to the same perplexity as at start."""
    from conftest import _steering_server

    root = tmp_path_factory.mktemp("train-tp2-guard")
    cfg = ts.write_config(root, guard_every=4, guard_threshold=0.02, **{**SETTINGS, "lr": 5e-3})
    env = {**ts.plugin_env(cfg), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, ("train-tp2-guard",), env, extra_args=TP_ARGS)
    before = _complete(srv)
    assert ts.request(srv, "POST", "/v1/training/examples", _examples())[0] == 202
    t0 = time.time()
    while not ((st := ts.status(srv))["guard"]["trips"] and st["guard"]["events"][0]["heldout_ppl_after"]):
        assert time.time() - t0 < 300 and not st.get("last_error"), st
        time.sleep(0.5)
    ev = st["guard"]["events"][0]
    print(f"\nTP=2 GUARD: tripped at step {ev['step']}: held-out ppl {ev['heldout_ppl']:.3f} > {ev['limit']:.3f}, "
          f"after the rollback {ev['heldout_ppl_after']:.3f} (at start {st['heldout_ppl_initial']:.3f})")
    assert all(w["paused"] and w["guard"]["trips"] == 1 for w in st["workers"]), st["workers"]
    assert ev["heldout_ppl_after"] == pytest.approx(st["heldout_ppl_initial"], rel=1e-6)
    assert _complete(srv) == before


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_every", [0, 4], ids=["no-checkpoints", "checkpoints"])
def test_a_rank_killed_mid_training_loses_nothing_and_trains_nothing_twice(vllm_servers, tmp_path, checkpoint_every):
    """SIGKILL one rank's worker mid-training: vLLM stops the whole server. Restarted at TP=2, the
    ranks restore the newest checkpoint step both of them wrote (each rank writes its own blocks),
    and every accepted example is in the final weights exactly once: trained before that step, or
    trained again after it. Without checkpoints the result is the uninterrupted run's."""
    import psutil

    from vllm_server import VLLMServer

    from plasticity.training.core import Journal

    vllm_servers.close()  # one server at a time on 2 cores
    examples = _examples()
    cfg = ts.write_config(tmp_path, eval_every=len(examples), checkpoint_every=checkpoint_every,
                          **{**SETTINGS, "yield_ms": 200.0})
    env = {**ts.plugin_env(cfg), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    s1 = VLLMServer(model_dir("qwen3-tiny"), dtype="float32", extra_args=TP_ARGS, env=env,
                    log_path=tmp_path / "s1.log").start()
    try:
        assert ts.request(s1, "POST", "/v1/training/examples", examples)[0] == 202
        t0 = time.time()
        while ts.status(s1)["examples_done"] < 6:
            assert time.time() - t0 < 300
            time.sleep(0.1)
        rank1 = [p for p in psutil.Process(s1.proc.pid).children(recursive=True) if "Worker_TP1" in " ".join(p.cmdline())
                 or p.name().endswith("Worker_TP1")]
        assert len(rank1) == 1, [p.name() for p in psutil.Process(s1.proc.pid).children(recursive=True)]
        rank1[0].kill()
        assert s1.proc.wait(120) is not None  # vLLM takes the whole server down
    finally:
        s1.stop()
    done_path = tmp_path / "journal.jsonl.done"
    before = Journal(done_path).read()  # what the killed server wrote (one writer: rank 0)
    assert 6 <= len(before) < len(examples)
    if checkpoint_every:
        for r in (0, 1):
            assert (tmp_path / "ckpt" / f"step-00000004.tp2-rank{r}.safetensors").exists()
    s2 = VLLMServer(model_dir("qwen3-tiny"), dtype="float32", extra_args=TP_ARGS, env=env,
                    log_path=tmp_path / "s2.log").start()
    try:
        st = ts.status(s2)
        ck = st["checkpoint_step"]
        assert ck == (4 if checkpoint_every else None), st
        kept = {r["id"] for r in before if ck is not None and int(r["step"]) <= ck}
        assert st["recovered"] == len(examples) - len(kept), st
        t0 = time.time()
        while not (st["examples_done"] >= len(examples) and st["heldout_step"] == st["step"]):
            assert time.time() - t0 < 600 and not st.get("last_error"), st
            time.sleep(1.0)
            st = ts.status(s2)
    finally:
        s2.stop()
    after = [r["id"] for r in Journal(done_path).read()[len(before):]]  # written by the restarted server
    assert not kept & set(after) and len(after) == len(set(after))
    assert sorted(kept | set(after)) == sorted(ex["id"] for ex in examples)  # each once, none lost
    print(f"\nTP=2 KILL-RESTART ({checkpoint_every=}): rank 1 killed after {len(before)} examples; restored "
          f"checkpoint step {ck}, {len(kept)} examples kept, {len(after)} trained again; {st['step']} steps, last loss "
          f"{st['last_loss']:.6f}, held-out ppl {st['heldout_ppl']:.3f}")
    if not checkpoint_every:
        ref, _ = _reference(cfg, examples)
        print(f"  uninterrupted TP=1: last loss {ref['last_loss']:.6f}, held-out ppl {ref['heldout_ppl']:.3f}")
        assert st["step"] == ref["step"] and st["last_loss"] == pytest.approx(ref["last_loss"], rel=1e-4)
        assert st["heldout_ppl"] == pytest.approx(ref["heldout_ppl"], rel=1e-4)
