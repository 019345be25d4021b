"""``Trainer``: the training thread of one worker (queue → batch → context-frozen loss →
backward → LiveApollo), its journals, replay, held-out evaluation, guard and checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue as queue_mod
import random
import re
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import torch

from plasticity.training import cpus

from .journal import NOT_TRAINED, Journal, read_texts
from .live_apollo import LiveApollo, ShardedLiveApollo
from .loss import (
    batchable,
    frozen_context_loss,
    frozen_context_loss_batch,
    heldout_perplexity,
)

log = logging.getLogger("vllm.plasticity.training")

MAX_ATTEMPTS = 3  # failed steps an example may be part of before it is given up
# step-00000012.safetensors at TP=1; step-00000012.tp2-rank0.safetensors: one rank's blocks under TP
CHECKPOINT_NAME = re.compile(r"step-(\d{8})(\.tp\d+-rank\d+)?\.safetensors")


class _SavedBytes:
    """Counts the bytes autograd saves for backward (the activations of a step), each storage
    once, weights excluded: the memory report compares it with the worker's RSS growth."""

    def __init__(self, weights: set[int]):
        self.weights, self.seen, self.bytes = weights, set(), 0

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.weights and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += st.nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t


class Trainer:
    """The training loop of one worker. ``model`` is the view module; ``queue`` an ``ExampleQueue``."""

    def __init__(self, model, trainable: list[str], cfg, queue, lock: threading.Lock, tokenizer=None,
                 last_serve=None, tp=None, item_loss=None):
        self.model, self.cfg, self.queue, self.lock = model, cfg, queue, lock
        # tensor_parallel.Rank when the model is one rank's shards (every rank runs this loop in step)
        self.tp = tp
        # () -> monotonic time of the latest serving forward (None: no serving side)
        self.last_serve = last_serve
        self.tokenizer = tokenizer
        params = dict(model.named_parameters())
        self.trainable = trainable
        self.params = [params[n] for n in trainable]
        # storages of all weights: tensors autograd saves from them are not activations
        self._weight_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        opt_cls = LiveApollo if tp is None else ShardedLiveApollo
        self.opt = opt_cls(self.params, lock, lr=cfg.lr, rank=cfg.rank, scale_type=cfg.scale_type,
                           alpha=cfg.alpha, update_proj_gap=cfg.update_proj_gap,
                           norm_growth_limit=cfg.norm_growth_limit, betas=cfg.betas,
                           weight_decay=cfg.weight_decay, stochastic_rounding=cfg.stochastic_rounding,
                           seed=cfg.seed, threads=cfg.threads, atomic=cfg.atomic_steps)
        if tp is not None:
            tp.shard_optimizer(self.opt, dict(zip(trainable, self.params)))
        self.done_journal = Journal(cfg.done_journal) if cfg.done_journal else None
        # every rank reads the done journal (to recover the same queue), one writes it
        self.writes_done = self.done_journal is not None and (tp is None or tp.rank == 0)
        self._ckpt_suffix = "" if tp is None else f".tp{tp.size}-rank{tp.rank}"
        self.seen: set[str] = set()
        self.retry: deque = deque()  # examples of a failed step, trained before the queue's next
        self.attempts: dict[str, int] = {}  # example id -> failed steps it was part of
        self.rng = random.Random(cfg.seed)
        self.replay: list[list[int]] = []
        self.replay_credit = 0.0
        self.heldout_ids: torch.Tensor | None = None
        self.guard = None  # snapshots.Guard, set by the worker when configured
        self.version = None  # version.WeightsVersion: bumped after every change of the live weights
        # item_loss(model, context, decision) -> (loss, tokens): another loss for every item (the
        # experiments' full backprop); None = context-frozen, as one padded batch where the model allows
        self.item_loss = item_loss
        self._batchable = batchable(model) and item_loss is None
        self.control: "queue_mod.SimpleQueue" = queue_mod.SimpleQueue()  # (job id, fn) run between steps
        self.jobs: dict[str, dict] = {}
        self.paused = threading.Event()
        self.stop_ev = threading.Event()
        self.thread: threading.Thread | None = None
        # where training time goes (seconds, cumulative): context, decision or forward, backward, eval,
        # duty_sleep here; apollo, undo, lock_wait in the optimizer
        self.profile: dict[str, float] = {}
        self.stats = dict(step=0, examples_done=0, replay_used=0, skipped_steps=0, last_loss=None,
                          loss_ema=None, train_tokens=0, train_seconds=0.0, heldout_ppl=None,
                          heldout_ppl_initial=None, heldout_step=None, last_error=None, checkpoint_step=None)

    # ---- data ----
    def load_replay(self, max_chars: int = 200_000) -> None:
        if not self.cfg.replay_source or self.cfg.replay_ratio <= 0 or self.tokenizer is None:
            return
        text = "\n\n".join(read_texts(self.cfg.replay_source))[:max_chars]
        ids = self.tokenizer(text)["input_ids"]
        for i in range(0, len(ids) - 128, 128):
            self.replay.append(ids[i: i + 128])
        log.info("plasticity: %d replay chunks from %s", len(self.replay), self.cfg.replay_source)

    def load_heldout(self, seq=128, max_tokens: int | None = None) -> None:
        if not self.cfg.heldout or self.tokenizer is None:
            return
        max_tokens = max_tokens or self.cfg.heldout_tokens
        ids = self.tokenizer("\n\n".join(read_texts(self.cfg.heldout)))["input_ids"][:max_tokens]
        n = (len(ids) // seq) * seq
        if n == 0:
            # refuse at start-up: every perplexity (status, guard, snapshot metadata) needs one window
            raise ValueError(f"training.heldout {self.cfg.heldout.name}: {len(ids)} tokens, shorter than one "
                             f"evaluation window of {seq} tokens; give a longer held-out text")
        self.heldout_ids = torch.tensor(ids[:n]).view(-1, seq)

    def enqueue(self, examples: list[dict]) -> dict:
        """Push examples (dicts with id, context, decision) into the queue; duplicates ignored."""
        accepted, full = [], []
        for ex in examples:
            if ex["id"] in self.seen:
                continue
            if self.queue.push(ex):
                self.seen.add(ex["id"])
                accepted.append(ex["id"])
            else:
                full.append(ex["id"])
        return {"enqueued": accepted, "queue_full": full}

    # ---- evaluation ----
    def heldout_ppl(self) -> float | None:
        """Perplexity on the held-out windows (the first ``heldout_tokens`` tokens, 8192 by default).

        On the training thread each chunk of windows is followed by the same duty-cycle pause as a
        training step, so an evaluation takes at most ``serving_duty`` of the CPU while requests
        are being served instead of stalling serving for its whole length."""
        if self.heldout_ids is None:
            return None
        on_thread = threading.current_thread() is self.thread

        def after_chunk(dt: float) -> None:
            self.profile["eval"] = self.profile.get("eval", 0.0) + dt
            if on_thread:
                self._yield(dt)

        return heldout_perplexity(self.model, self.heldout_ids, after_chunk)

    def _eval(self) -> None:
        t0 = time.time()
        p = self.heldout_ppl()
        if p is not None:
            self.stats["heldout_ppl"], self.stats["heldout_step"] = p, self.stats["step"]
            if self.stats["heldout_ppl_initial"] is None:
                self.stats["heldout_ppl_initial"] = p
            log.info("plasticity: held-out perplexity %.3f at step %d (%.1f s)", p, self.stats["step"], time.time() - t0)

    # ---- one optimizer step ----
    def step(self, batch: list[dict]) -> dict:
        n_rep = 0
        if self.replay and self.cfg.replay_ratio > 0:
            # Keep replay/(replay + behavioural) = replay_ratio over time.
            self.replay_credit += len(batch) * self.cfg.replay_ratio / (1 - self.cfg.replay_ratio)
            n_rep = int(self.replay_credit)
            self.replay_credit -= n_rep
        items = [(ex["context"], ex["decision"]) for ex in batch]
        for _ in range(n_rep):
            c = self.rng.choice(self.replay)
            items.append((c[:64], c[64:]))
        t0 = time.time()
        losses, ntok = [], 0
        saved = _SavedBytes(self._weight_storages)
        prof = self.profile
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack), self._autocast():
            if self._batchable:  # one padded batch: a few large GEMMs instead of many small ones
                loss, ntok = frozen_context_loss_batch(self.model, items, times=prof)
                losses.append(loss)
            else:
                item_loss = self.item_loss or frozen_context_loss
                for ctx, dec in items:
                    loss, n = item_loss(self.model, ctx, dec)
                    losses.append(loss)
                    ntok += n
                loss = torch.stack(losses).mean()
                prof["forward"] = prof.get("forward", 0.0) + time.time() - t0
        self.stats["activation_bytes"] = saved.bytes
        self.stats["activation_bytes_peak"] = max(self.stats.get("activation_bytes_peak", 0), saved.bytes)
        lv = float(loss.detach())
        self.opt.begin()
        skipped = not math.isfinite(lv)
        if not skipped:
            tb, opt_before = time.perf_counter(), sum(self.opt.times.values())
            completed = False
            try:
                loss.backward()  # fused: parameters step (under the lock, a batch at a time) as gradients complete
                self.opt.flush()
                completed = True
            finally:
                self.opt.end(completed)
            # autograd's own share: the optimizer's hooks run inside backward and are counted apart
            prof["backward"] = (prof.get("backward", 0.0) + time.perf_counter() - tb
                                - (sum(self.opt.times.values()) - opt_before))
            skipped = self.opt.poisoned
        else:
            del loss, losses
        for p in self.params:
            p.grad = None
        dt = time.time() - t0
        st = self.stats
        st["step"] += 1
        st["replay_used"] += n_rep
        st["train_tokens"] += ntok
        st["train_seconds"] += dt
        if skipped:
            st["skipped_steps"] += 1
            log.warning("plasticity: training step %d skipped (non-finite loss or gradient; %d params "
                        "already stepped were rolled back, %d left stepped)", st["step"], self.opt.rolled_back,
                        self.opt.updated)
        else:
            st["last_loss"] = lv
            st["loss_ema"] = lv if st["loss_ema"] is None else 0.9 * st["loss_ema"] + 0.1 * lv
        return {"loss": lv, "skipped": skipped, "tokens": ntok, "replay": n_rep, "updated_params": self.opt.updated,
                "rolled_back_params": self.opt.rolled_back}

    def _autocast(self):
        """The forward passes' precision (``autocast``); backward follows the dtypes saved by them.
        bf16 casts of the weights are made once per pass and freed with it."""
        if self.cfg.autocast == "bf16":
            dev = next(iter(self.params)).device.type if self.params else "cpu"
            return torch.autocast(dev, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _finish(self, batch, res) -> None:
        self.stats["examples_done"] += len(batch)
        if self.writes_done:
            self.done_journal.append([{"id": ex["id"], "step": self.stats["step"],
                                       "status": "skipped" if res["skipped"] else "trained"} for ex in batch])
        if (self.cfg.checkpoint_dir and self.cfg.checkpoint_every
                and self.stats["step"] % self.cfg.checkpoint_every == 0):
            self.checkpoint()
        if self.cfg.eval_every and self.stats["step"] % self.cfg.eval_every == 0:
            self._eval()
        if self.guard is not None:
            self.guard.check(self)

    def _bump(self) -> None:
        if self.version is not None:
            self.version.bump()

    def _failed(self, batch: list[dict]) -> None:
        """A step raised: count it, and put its examples back to be trained by the next steps. An
        example in MAX_ATTEMPTS failed steps is given up, journaled as "failed" and counted."""
        st = self.stats
        st["failed_steps"] = st.get("failed_steps", 0) + 1
        given_up = []
        for ex in batch:
            k = self.attempts[ex["id"]] = self.attempts.get(ex["id"], 0) + 1
            (given_up if k >= MAX_ATTEMPTS else self.retry).append(ex)
        if given_up:
            st["examples_failed"] = st.get("examples_failed", 0) + len(given_up)
            log.error("plasticity: %d examples failed %d steps each and are given up: %s", len(given_up),
                      MAX_ATTEMPTS, [ex["id"] for ex in given_up][:10])
            if self.writes_done:
                self.done_journal.append([{"id": ex["id"], "step": st["step"], "status": "failed"} for ex in given_up])

    def discard_queued(self) -> int:
        """Empty the queue; the examples are journaled as done with status "discarded"."""
        if self.tp is not None:
            raise RuntimeError("discarding the queue is not supported under tensor parallelism yet (the ranks' "
                               "queues must stay the same)")
        out = []
        while (ex := self.queue.pop(0.0)) is not None:
            out.append(ex)
        if out and self.writes_done:
            self.done_journal.append([{"id": ex["id"], "step": self.stats["step"], "status": "discarded"}
                                      for ex in out])
        self.stats["examples_discarded"] = self.stats.get("examples_discarded", 0) + len(out)
        return len(out)

    def reset_optimizer(self) -> None:
        """Forget Apollo's moments and projections (after the weights jumped: rollback, merge)."""
        for st in self.opt.state.values():
            for k in [k for k in st if k != "seed"]:  # the per-parameter seed is identity, not history
                del st[k]

    # ---- control: work that must not interleave with a step (snapshots, rollback, merges) ----
    def submit(self, fn, changes_weights: bool = True) -> str:
        """Run ``fn()`` on the training thread between steps; returns a job id for :meth:`job`.
        ``changes_weights=False`` (a snapshot save, a LoRA build) keeps the weights version, so
        cached K/V and adapters built for these weights stay valid."""
        jid = uuid.uuid4().hex
        self.jobs[jid] = {"done": False}
        while len(self.jobs) > 256:
            self.jobs.pop(next(iter(self.jobs)))
        self.control.put((jid, fn, changes_weights))
        return jid

    def job(self, jid: str) -> dict:
        return self.jobs.get(jid, {"done": True, "ok": False, "error": f"unknown job {jid}", "code": 404})

    def _run_control(self, limit: int | None = None) -> None:
        """Run the control jobs queued now (at most ``limit``: under TP, the number every rank has)."""
        while limit is None or limit > 0:
            if limit is not None:
                limit -= 1
            try:
                jid, fn, changes_weights = self.control.get_nowait()
            except queue_mod.Empty:
                return
            try:
                result = fn()
                if changes_weights:
                    self._bump()  # a rollback or merge changed the live weights
                self.jobs[jid] = {"done": True, "ok": True, "result": result}
            except Exception as e:  # noqa: BLE001 - reported to the caller
                if changes_weights:
                    self._bump()  # a half-done rollback or merge may have written some tensors
                code = getattr(e, "code", None)
                if code is None:
                    log.exception("plasticity: control job failed")
                self.jobs[jid] = {"done": True, "ok": False, "error": str(e) or repr(e), "code": code or 500}

    # ---- checkpoints (trainable tensors only; atomic rename) ----
    def checkpoint(self) -> Path:
        from safetensors.torch import save_file

        d = Path(self.cfg.checkpoint_dir)
        d.mkdir(parents=True, exist_ok=True)
        step = self.stats["step"]
        tmp = d / f".step-{step:08d}{self._ckpt_suffix}.tmp"
        with self.lock:  # a consistent snapshot between forwards/updates
            tensors = {n: p.detach().clone().contiguous() for n, p in zip(self.trainable, self.params)}
        save_file(tensors, str(tmp), metadata={"step": str(step)})
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        final = d / f"step-{step:08d}{self._ckpt_suffix}.safetensors"
        os.replace(tmp, final)
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        self.stats["checkpoint_step"] = step
        return final

    def restore_latest(self) -> int | None:
        """Load the newest checkpoint into the live weights (in place). Returns its step."""
        if not self.cfg.checkpoint_dir:
            return None
        d = Path(self.cfg.checkpoint_dir)
        steps = {}
        for f in d.glob("step-*.safetensors") if d.exists() else []:
            m = CHECKPOINT_NAME.fullmatch(f.name)
            if m and (m.group(2) or "") == self._ckpt_suffix:
                steps[int(m.group(1))] = f
        step = max(steps, default=None)
        if self.tp is not None:  # the newest step every rank has (a crash can land between two ranks' writes)
            import torch.distributed as dist

            t = torch.tensor([-1 if step is None else step], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.tp.group)
            step = None if int(t[0]) < 0 else int(t[0])
        if step is None:
            return None
        if step not in steps:
            raise RuntimeError(f"plasticity: checkpoint of step {step} missing for this rank in {d}")
        files = [steps[step]]
        from safetensors.torch import load_file

        tensors = load_file(str(files[-1]))
        params = dict(self.model.named_parameters())
        with self.lock, torch.no_grad():
            for n, t in tensors.items():
                if n in params:
                    params[n].copy_(t)
        self.stats["checkpoint_step"] = step
        log.info("plasticity: restored training checkpoint %s", files[-1])
        return step

    # ---- recovery ----
    def recover(self, accepted_journal: Path | None) -> int:
        """Re-enqueue accepted examples that are not trained (or whose training is not in the checkpoint)."""
        if accepted_journal is None:
            return 0
        ck = self.restore_latest()
        done = set()
        if self.done_journal is not None:
            for r in self.done_journal.read():
                # Trained examples survive a restart only inside a checkpoint: the live weights start
                # from the model files (or the newest checkpoint), so everything trained after it,
                # or everything when there is no checkpoint, is trained again from the journal.
                if r.get("status") in NOT_TRAINED or (ck is not None and int(r.get("step", 0)) <= ck):
                    done.add(r["id"])
        if ck is not None:
            self.stats["step"] = ck
        todo = [r for r in Journal(accepted_journal).read() if r.get("id") not in done]
        self.stats["recovered"] = len(todo)
        self.stats["examples_done"] = len(done)
        self.enqueue(todo)
        return len(todo)

    # ---- thread ----
    def start(self) -> None:
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, name="plasticity-train", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Own CPUs first (see cpus.py): narrow while requests are served, wide while serving idles.
        self.cpu_plan = cpus.TrainingCpus(self.cfg.cpus, self.cfg.idle_cpus, self.cfg.threads)
        self.cpu_plan.spawn_team()
        self._place_cpus()
        self.stats["omp_team"] = len(self.cpu_plan.team)
        log.info("plasticity: training thread on CPUs %s with %d threads, %s while serving is idle "
                 "(serving pinned to %s; OpenMP team threads %s)", sorted(self.cpu_plan.narrow), self.cpu_plan.n_narrow,
                 sorted(self.cpu_plan.wide), sorted(self.cpu_plan.serving), self.cpu_plan.team)
        try:
            self._eval()
        except Exception as e:  # noqa: BLE001
            self.stats["last_error"] = f"held-out eval: {e!r}"
        if self.guard is not None and self.guard.ref_ppl is None:
            self.guard.ref_ppl = self.stats["heldout_ppl"]
        n_beh = max(1, round(self.cfg.batch_size * (1 - self.cfg.replay_ratio))) if self.replay else self.cfg.batch_size
        while not self.stop_ev.is_set():
            if self.tp is not None:
                batch = self._agreed_batch(n_beh)
                if batch is None:
                    continue
            else:
                self._run_control()
                if self._held():
                    time.sleep(0.05)
                    continue
                first = self.retry.popleft() if self.retry else self.queue.pop(0.2)
                if first is None:
                    continue
                batch = [first]
                while len(batch) < n_beh:
                    nxt = self.retry.popleft() if self.retry else self.queue.pop(0.0)
                    if nxt is None:
                        break
                    batch.append(nxt)
            self._place_cpus()
            t0 = time.monotonic()
            try:
                res = self.step(batch)
            except Exception as e:  # noqa: BLE001 - never kill the worker; report, and train them again
                log.exception("plasticity: training step failed")
                self.stats["last_error"] = repr(e)
                for p in self.params:
                    p.grad = None
                self._failed(batch)
            else:
                self._finish(batch, res)
            self._bump()  # after the step (and a guard rollback): no K/V of older weights is reused
            self._yield(time.monotonic() - t0)

    def _held(self) -> bool:
        return self.paused.is_set() or bool(self.cfg.max_steps and self.stats["step"] >= self.cfg.max_steps)

    def _agreed_batch(self, n_beh: int) -> list[dict] | None:
        """Under TP: the batch every rank takes this turn, or None. The ranks' queues receive the
        same examples and control jobs in the same order (every RPC reaches every rank), but not at
        the same moment: each turn the ranks take the minimum over their own group of the jobs and
        examples they hold and of whether they may step, so their collectives always pair up."""
        import torch.distributed as dist

        held = self.retry + deque(self.queue.drain())  # drained into retry: pops stay ordered
        self.retry = held
        t = torch.tensor([self.control.qsize(), len(held), 0 if self._held() else 1], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.tp.group)
        jobs, n, may_step = int(t[0]), int(t[1]), bool(t[2])
        if jobs:
            self._run_control(jobs)  # snapshot operations gather and sum: in step too
            return None
        if not may_step or n == 0:
            time.sleep(0.05)
            return None
        return [self.retry.popleft() for _ in range(min(n, n_beh))]

    def _place_cpus(self) -> None:
        """Before a step: widen to ``idle_cpus`` if serving is idle, narrow to ``cpus`` if not."""
        wide = self.cpu_plan.widens and not self._serving_now()
        if wide == self.cpu_plan.is_wide:
            return
        threads = self.cpu_plan.apply(wide)
        self.opt.restart_workers(threads)  # Apollo's pool inherits the new mask
        mask = self.cpu_plan.wide if wide else self.cpu_plan.narrow
        self.stats["cpus"], self.stats["serving_cpus"] = sorted(mask), sorted(self.cpu_plan.serving)
        self.stats["threads"] = threads
        self.stats["cpu_switches"] = self.stats.get("cpu_switches", 0) + 1

    def _serving_now(self) -> bool:
        """Whether a model forward for a request ran within ``serving_idle_ms``."""
        if self.last_serve is None:
            return False
        last = self.last_serve()
        return last is not None and time.monotonic() - last <= self.cfg.serving_idle_ms / 1000

    def _yield(self, dt: float) -> None:
        pause = self.pause_after(dt)
        if pause > 0:
            t0 = time.monotonic()
            self.stop_ev.wait(pause)
            self.profile["duty_sleep"] = self.profile.get("duty_sleep", 0.0) + time.monotonic() - t0

    def pause_after(self, dt: float) -> float:
        """Seconds to leave the CPU to serving after a step of ``dt`` s: the fixed ``yield_ms``, and
        while requests are being served, enough that training takes at most ``serving_duty`` of
        wall time (2 shared cores: a training step slows every concurrent forward)."""
        pause = self.cfg.yield_ms / 1000
        d = self.cfg.serving_duty
        if d < 1 and self._serving_now():
            pause = max(pause, dt * (1 - d) / d)
            self.stats["serving_yields"] = self.stats.get("serving_yields", 0) + 1
        return pause

    def stop(self) -> None:
        self.stop_ev.set()
        if self.thread is not None:
            self.thread.join(10)

    def status(self) -> dict:
        st = dict(self.stats)
        st["examples_queued"] = len(self.queue) + len(self.retry)
        st.setdefault("failed_steps", 0)
        st["paused"] = self.paused.is_set()
        st["tokens_per_s"] = st["train_tokens"] / st["train_seconds"] if st["train_seconds"] else 0.0
        st["trainable_params"] = sum(p.numel() for p in self.params)
        st["trainable_tensors"] = len(self.params)
        st["optimizer_state_bytes"] = self.opt.state_bytes()
        st["adamw_state_bytes"] = 2 * 4 * st["trainable_params"]
        st["optimizer_skipped_params"] = self.opt.skipped
        st["undo_bytes_peak"] = self.opt.undo_bytes_peak  # atomic steps: transient copy during backward
        st["profile_s"] = {k: round(v, 3) for k, v in {**self.profile, **self.opt.times}.items()}
        if self.guard is not None:
            st["guard"] = self.guard.status()
        # fused: gradients live until their batch steps (lock_batch_bytes, plus the one that crossed it)
        largest = max((p.numel() * p.element_size() for p in self.params), default=0)
        st["largest_grad_bytes"] = largest
        st["grad_bytes_bound"] = self.opt.lock_batch_bytes + largest
        st["lock_acquisitions"] = self.opt.lock_acquisitions
        return st
