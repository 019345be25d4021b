"""Shared machinery of the experiments: the model + Trainer rig and its evaluation. Where models and
texts are found (``paths.py``), the written report (``report.py``) and the plots (``plots.py``) are
their own modules; this one re-exports them.

Every experiment trains through the code path the server uses: ``training.trainer.Trainer.step``
(context-frozen loss, replay mixing by credit, fused ``LiveApollo`` stepping each parameter from
its gradient hook), on a transformers model loaded from a model folder. Between runs the
trainable weights are reset to the model's own values (kept once in memory), and each run gets
a fresh Trainer (fresh optimizer state; the previous optimizer's gradient hooks are removed).

Measurements:

- behaviour: the shipped behaviour tests (``eval/data/behaviours``), greedy, split into the
  held-out tests (``heldout_pass``: the behaviour on unseen prompts) and the ``control-*`` tests
  (``control_pass``: prompts that must *not* get the behaviour; they catch over-generalisation),
  plus ``decision_nll``: mean per-token negative log-likelihood of the behaviour's reply on the
  held-out examples (teacher-forced; a continuous measure that moves before any greedy test flips);
- forgetting: held-out perplexity on general text (``core.heldout_perplexity``: the corpus's
  held-out documents joined, 128-token windows, the first ``heldout_tokens`` tokens);
- cost: wall time per step, trained tokens/s, optimizer state bytes (``Apollo.state_bytes``),
  activation bytes saved for backward (the Trainer counts them per step) and the process RSS.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# the experiments use all of these through this module (``from . import common as C``)
from .paths import corpus_paths, manifest, models_root, resolve_model
from .plots import bar_plot, heatmap, line_plot, panel_bars, set_caption
from .report import fmt, sanity_problems, write_outputs

__all__ = ["EXPERIMENTS", "Budget", "Budgets", "Example", "Rig", "Log", "models_root", "resolve_model", "corpus_paths",
           "write_outputs", "sanity_problems", "pct", "fmt", "line_plot", "bar_plot", "heatmap", "panel_bars",
           "relative_change"]

# name -> (module, one-line description)
EXPERIMENTS = {
    "examples-needed": ("examples_needed", "behavioural change vs number of examples, with held-out perplexity"),
    "lr-sweep": ("lr_sweep", "learning rate 1e-5…1e-3, narrow vs diverse (25% replay) data: learned vs forgotten"),
    "backward-transfer": ("backward_transfer", "behaviours in sequence: does learning B change A and general text?"),
    "context-frozen": ("context_frozen", "context-frozen vs full backprop: behaviour, forgetting, tokens/s, memory"),
    "gdn-state": ("gdn_state", "hybrid model: change of GDN recurrent states / attention outputs per layer"),
    "steering-vs-training": ("steering_vs_training", "a steering vector vs the same behaviour trained into weights"),
    "apollo-vs-adamw": ("apollo_vs_adamw", "Apollo vs Apollo-Mini vs AdamW: loss, forgetting, optimizer memory"),
}

DEFAULT_MODEL = "smollm2-135m-instruct"  # the project's real model (scripts/setup_smollm2.sh builds it)
TINY_MODEL = "qwen3-tiny"                # --quick runs (CI) and the toy comparison
HYBRID_MODEL = "qwen3_5-tiny"            # gdn-state: the only hybrid (Gated DeltaNet) model there is locally
# A model whose weight files exceed this gets the experiment's ``real`` budget: sized for
# SmolLM2-135M (540 MB in float32) on 2 cores, against 17 MB for the 4M-parameter test models.
REAL_MODEL_BYTES = 100 * 2**20


# --------------------------------------------------------------------------- small helpers

class Log:
    """One progress line per event on stderr: ``[experiment NAME +12.3s] message``."""

    def __init__(self, name: str, stream=None, enabled: bool = True):
        self.name, self.t0, self.enabled = name, time.monotonic(), enabled
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, msg: str) -> None:
        if self.enabled:
            self.stream.write(f"[experiment {self.name} +{time.monotonic() - self.t0:.1f}s] {msg}\n")
            self.stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Budget:
    """What a run may spend; each experiment defines QUICK and FULL instances of its own fields."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self):
        return f"Budget({self.__dict__})"


class Budgets:
    """An experiment's budgets: ``quick`` (a few steps on the tiny model: a smoke test), ``tiny`` (the
    full run on the 4M-parameter test models) and ``real`` (the full run sized for SmolLM2-135M on 2
    cores, at most 20 minutes a seed; a real model learns at a tenth of the tiny model's rate and
    costs ~30x more per step). Without ``--model`` a full run uses ``default_model`` and --quick
    the tiny one."""

    def __init__(self, quick: Budget, tiny: Budget, real: Budget | None = None, *,
                 default_model: str = DEFAULT_MODEL):
        self.quick, self.tiny, self.real, self.default_model = quick, tiny, real, default_model

    def model_dir(self, args) -> Path:
        default = TINY_MODEL if getattr(args, "quick", False) and self.default_model == DEFAULT_MODEL \
            else self.default_model
        return resolve_model(getattr(args, "model", None), default)

    def pick(self, args, model_dir: Path | None = None) -> Budget:
        if getattr(args, "quick", False):
            return self.quick
        if self.real is not None and model_bytes(model_dir or self.model_dir(args)) > REAL_MODEL_BYTES:
            return self.real
        return self.tiny


def model_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))


def model_identity(model_dir: Path) -> dict:
    """The model's name and the sha256 of its weights (from the build manifest, else hashed here)."""
    import hashlib

    m = manifest(model_dir)
    sha = m.get("model_safetensors_sha256")
    if not sha:
        files = sorted(Path(model_dir).glob("*.safetensors"))
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        sha = h.hexdigest() if files else "unknown"
    return {"model_name": m.get("name") or Path(model_dir).name, "model_sha256": sha}


# How much each measurement reads: the quick (CI) variants a few tests and 512 held-out tokens, the
# full runs every test and 4096 tokens. An experiment spreads one of these into its Budget.
QUICK_EVAL = dict(heldout_tokens=512, max_tests=4, max_controls=2, max_nll=4, max_general=2)
FULL_EVAL = dict(heldout_tokens=4096, max_tests=None, max_controls=None, max_nll=None, max_general=None)
# SmolLM2 (~45 s an evaluation on one core): 8 of the 16 held-out tests. The general questions are
# its forgetting measure: its held-out perplexity is of the same Python-source corpus that replay
# comes from, so replay lowers it whatever the training does to the model's other knowledge.
REAL_EVAL = dict(heldout_tokens=4096, max_tests=8, max_controls=None, max_nll=None, max_general=None)
# Ten questions SmolLM2-135M-Instruct answers correctly within 12 tokens (the tiny models none).
GENERAL_TESTS = Path(__file__).resolve().parents[1] / "eval" / "data" / "general" / "tests.jsonl"


def relative_change(before: float, after: float) -> float:
    return (after - before) / before


def general_lost(base: dict, m: dict) -> int:
    """How many more general questions fail now than at the base (0 when not measured)."""
    if base.get("general_pass") is None or m.get("general_pass") is None:
        return 0
    return max(0, round((base["general_pass"] - m["general_pass"]) * base.get("general_n", 0)))


def general_text(base: dict, m: dict) -> str:
    """", general questions 9/10" for a model that answers some of them at the base, else ""."""
    if not base.get("general_pass") or m.get("general_pass") is None:
        return ""
    return f", general questions {round(m['general_pass'] * m['general_n'])}/{m['general_n']}"


def safe(base: dict, m: dict, max_ppl_rise: float) -> bool:
    """Forgetting within bounds: held-out perplexity rose less than ``max_ppl_rise`` and no general
    question the base answered is lost."""
    return relative_change(base["ppl"], m["ppl"]) < max_ppl_rise and general_lost(base, m) == 0


def pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.{digits}f}%"


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing: fall back to the peak RSS
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------- the rig

@dataclass
class Example:
    id: str
    context: list
    decision: list

    def as_dict(self) -> dict:
        return {"id": self.id, "context": self.context, "decision": self.decision}


class Rig:
    """A transformers model with its trainable parameters selected, base weights kept, data loaded."""

    def __init__(self, model_dir: Path, *, heldout: Path, replay: Path, dtype: str = "float32",
                 modules=("all-linear",), heldout_tokens: int = 4096, seed: int = 0, log: Log | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from plasticity.training import views

        self.log = log or Log("?", enabled=False)
        self.model_dir, self.seed, self.dtype_name = Path(model_dir), int(seed), dtype
        self.heldout_path, self.replay_path = Path(heldout), Path(replay)
        t0 = time.monotonic()
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dt).eval()
        self.tok = AutoTokenizer.from_pretrained(self.model_dir)
        names = [n for n, _ in self.model.named_parameters()]
        self.modules = tuple(modules)
        self.trainable = sorted(views.select(names, self.modules))
        sel = set(self.trainable)
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in sel)
        self.params = {n: p for n, p in self.model.named_parameters() if n in sel}
        self._base = {n: p.detach().clone() for n, p in self.params.items()}
        im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.eos = im_end if isinstance(im_end, int) and im_end != self.tok.unk_token_id else self.tok.eos_token_id
        self.lock = threading.Lock()
        self._trainer = None
        self.replay: list[list[int]] = []
        self.heldout_ids = None
        self.heldout_tokens = int(heldout_tokens)
        tr = self.trainer(lr=0.0, replay_ratio=0.25)
        tr.load_replay()
        tr.load_heldout(max_tokens=self.heldout_tokens)
        self.replay, self.heldout_ids = tr.replay, tr.heldout_ids
        self.release()
        self.n_trainable = sum(p.numel() for p in self.params.values())
        self.log(f"loaded {self.model_dir.name} ({dtype}, {self.n_trainable / 1e6:.2f} M trainable in "
                 f"{len(self.params)} tensors, {len(self.replay)} replay chunks, "
                 f"{0 if self.heldout_ids is None else self.heldout_ids.numel()} held-out tokens) "
                 f"in {time.monotonic() - t0:.1f}s")

    # ---- weights and trainers ----
    def reset(self) -> None:
        """Trainable weights back to the model's own values, bit for bit."""
        import torch

        self.release()
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self._base[n])

    def trainer(self, *, lr: float, rank: int = 32, scale_type: str = "channel", replay_ratio: float = 0.25,
                seed: int | None = None, item_loss=None, **over):
        """A fresh Trainer (fresh optimizer) on the rig's model; the previous one is released first.
        ``item_loss``: another loss per item than the server's context-frozen one (e.g. ``full_loss``)."""
        from plasticity.training.queue import ExampleQueue
        from plasticity.training import config as tc, core

        self.release()
        cfg = tc.from_dict({"enabled": False, "lr": lr, "rank": rank, "scale_type": scale_type,
                            "replay_ratio": replay_ratio, "replay_source": str(self.replay_path),
                            "heldout": str(self.heldout_path), "seed": self.seed if seed is None else seed,
                            "threads": 1, **over})
        tr = core.Trainer(self.model, self.trainable, cfg, ExampleQueue(16), self.lock, tokenizer=self.tok,
                          item_loss=item_loss)
        tr.replay, tr.heldout_ids = self.replay, self.heldout_ids
        self._trainer = tr
        return tr

    def release(self) -> None:
        """Remove the current optimizer's gradient hooks (else two optimizers would step each weight)."""
        if self._trainer is not None:
            for h in self._trainer.opt._hooks:
                h.remove()
            self._trainer.opt._hooks.clear()
            self._trainer = None
        for p in self.params.values():
            p.grad = None

    def weight_delta(self) -> dict[str, float]:
        """‖W − W_base‖ / ‖W_base‖ per trainable tensor."""
        out = {}
        for n, p in self.params.items():
            b = self._base[n].float()
            out[n] = float((p.detach().float() - b).norm() / b.norm().clamp_min(1e-30))
        return out

    # ---- data ----
    def chat_ids(self, messages: list[dict]) -> list[int]:
        out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = out["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def encode(self, context, decision: str, id: str = "", eos: bool = True) -> Example:
        ctx = self.chat_ids(context) if isinstance(context, list) else [int(i) for i in self.tok(context)["input_ids"]]
        dec = [int(i) for i in self.tok(decision, add_special_tokens=False)["input_ids"]]
        if eos:
            dec.append(int(self.eos))
        return Example(id or f"ex-{len(ctx)}-{len(dec)}", ctx, dec)

    def behaviour_examples(self, name: str, split: str = "train", *, shuffle: bool = True) -> list[Example]:
        from plasticity.eval.behaviour import behaviour_files

        rows = [json.loads(l) for l in behaviour_files(name)[split].read_text().splitlines() if l.strip()]
        ex = [self.encode(r["context"], r["decision"], r.get("id", f"{name}-{split}-{i}")) for i, r in enumerate(rows)]
        if shuffle:
            random.Random(f"{self.seed}:{name}:{split}").shuffle(ex)
        return ex

    def tests(self, name: str) -> tuple[list, list]:
        """(held-out tests, control tests) of a shipped behaviour."""
        from plasticity.eval.behaviour import behaviour_files, load_tests

        tests = load_tests(behaviour_files(name)["tests"])
        return ([t for t in tests if not t.id.startswith("control")], [t for t in tests if t.id.startswith("control")])

    # ---- measurements ----
    def generator(self):
        from plasticity.eval.behaviour import local_generator

        return local_generator(model=self.model, tokenizer=self.tok)

    def behaviour(self, name: str, *, max_tests: int | None = None, max_controls: int | None = None,
                  max_nll: int | None = None, generate_fn=None) -> dict:
        """Pass rates on the held-out and control tests + decision NLL on the held-out examples."""
        from plasticity.eval.behaviour import run_tests

        held, ctrl = self.tests(name)
        held, ctrl = held[:max_tests], ctrl[:max_controls]
        gen = generate_fn or self.generator()
        rh, rc = run_tests(gen, held, on_error="raise"), run_tests(gen, ctrl, on_error="raise")
        nll = self.decision_nll(self.behaviour_examples(name, "heldout", shuffle=False)[:max_nll])
        return {"heldout_pass": rh["pass_rate"], "heldout_n": rh["n"], "control_pass": rc["pass_rate"],
                "control_n": rc["n"], "decision_nll": nll,
                "sample": (rh["results"][0]["output"] if rh["results"] else None)}

    def scores(self, budget: Budget, name: str | None = None, *, ppl: bool = True) -> dict:
        """``behaviour`` of ``name`` (default: the budget's behaviour) read within the budget's test
        and NLL limits, with the held-out perplexity of general text unless ``ppl`` is false."""
        out = self.behaviour(name or budget.behaviour, max_tests=budget.max_tests, max_controls=budget.max_controls,
                             max_nll=budget.max_nll)
        if ppl:
            out["ppl"] = self.ppl()
            out.update(self.general(getattr(budget, "max_general", None)))
        return out

    def general(self, limit: int | None = None) -> dict:
        """Pass rate on the shipped general questions (greedy), a forgetting measure that replay text
        cannot game."""
        from plasticity.eval.behaviour import load_tests, run_tests

        tests = load_tests(GENERAL_TESTS)[:limit]
        r = run_tests(self.generator(), tests, on_error="raise")
        return {"general_pass": r["pass_rate"], "general_n": r["n"]}

    def decision_nll(self, examples: list[Example]) -> float:
        """Mean per-token NLL (nats) of the decisions given their contexts, teacher-forced, no gradient."""
        import torch
        import torch.nn.functional as F

        total, n = 0.0, 0
        with torch.no_grad():
            for e in examples:
                ids = torch.tensor([e.context + e.decision])
                logits = self.model(input_ids=ids).logits[0, len(e.context) - 1: -1].float()
                total += float(F.cross_entropy(logits, torch.tensor(e.decision), reduction="sum"))
                n += len(e.decision)
        return total / n

    def ppl(self) -> float:
        """Held-out perplexity of the general text (the server's own measure, on the rig's tokens)."""
        from plasticity.training import core

        return float(core.heldout_perplexity(self.model, self.heldout_ids))

    # ---- training ----
    def teach(self, tr, examples: list[Example], steps: int, *, per_step: int = 1, label: str = "",
              on_step=None, log_every: int | None = None, offset: int = 0) -> dict:
        """``steps`` Trainer steps, each on the next ``per_step`` examples (cycling; ``offset`` steps already
        done), replay mixed in by the Trainer. Returns losses, timing and memory."""
        if not examples and steps:
            raise ValueError("no examples to teach")
        losses, rss0 = [], _rss()
        rss_peak = rss0
        st0 = dict(tr.stats)
        t0 = time.monotonic()
        every = log_every or max(1, steps // 4)
        for s in range(steps):
            batch = [examples[((offset + s) * per_step + k) % len(examples)].as_dict() for k in range(per_step)]
            res = tr.step(batch)
            losses.append(res["loss"])
            rss_peak = max(rss_peak, _rss())
            if on_step is not None:
                on_step(s + 1, res)
            if (s + 1) % every == 0 or s + 1 == steps:
                self.log(f"{label} step {s + 1}/{steps} loss {res['loss']:.3f}")
        wall = time.monotonic() - t0
        st = tr.stats
        secs = st["train_seconds"] - st0["train_seconds"]
        toks = st["train_tokens"] - st0["train_tokens"]
        k = max(1, min(10, len(losses) // 4 or 1))
        finite = [x for x in losses if math.isfinite(x)]
        return {
            "steps": steps, "examples_per_step": per_step, "wall_seconds": wall,
            "seconds_per_step": wall / steps if steps else 0.0,
            "train_tokens": toks, "tokens_per_s": toks / secs if secs > 0 else 0.0,
            "replay_chunks": st["replay_used"] - st0["replay_used"],
            "skipped_steps": st["skipped_steps"] - st0["skipped_steps"],
            "loss_first": finite[0] if finite else None,
            "loss_last": (sum(finite[-k:]) / len(finite[-k:])) if finite else None,
            "losses": losses,
            "optimizer_state_bytes": int(tr.opt.state_bytes()),
            "adamw_state_bytes": 2 * 4 * self.n_trainable,
            "activation_bytes_peak": int(st.get("activation_bytes_peak", 0)),
            "rss_start_bytes": rss0, "rss_peak_delta_bytes": rss_peak - rss0,
        }


def finish(result: dict, log: Log, *, quick: bool, budget: Budget, setup: dict) -> dict:
    """Common fields of every result."""
    result["quick"] = bool(quick)
    result["budget"] = budget.as_dict()
    result["setup"] = setup
    result["seconds"] = log.elapsed()
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def start(args, name: str, budgets: Budgets, *, dtype: str = "float32",
          modules=("all-linear",)) -> tuple[Rig, Log, Path, Budget]:
    """Seeds, the progress log, the output folder, the rig and the budget for its model, from the CLI
    arguments."""
    import torch

    torch.set_num_threads(int(getattr(args, "threads", None) or 1))
    seed = int(getattr(args, "seed", 0) or 0)
    torch.manual_seed(seed)
    random.seed(seed)
    log = Log(name, enabled=not getattr(args, "no_progress", False))
    model_dir = budgets.model_dir(args)
    budget = budgets.pick(args, model_dir)
    heldout, replay = corpus_paths(model_dir, getattr(args, "heldout", None), getattr(args, "replay", None))
    out = Path(getattr(args, "out", None) or Path("experiments-out") / name)
    out.mkdir(parents=True, exist_ok=True)
    ident = model_identity(model_dir)
    set_caption(f"{ident['model_name']}, model.safetensors sha256 {ident['model_sha256'][:12]}, "
                f"seed {seed} (one seed)")
    log(f"{'quick' if args.quick else 'full'} budget {budget.as_dict()} on {ident['model_name']} -> {out}")
    rig = Rig(model_dir, heldout=heldout, replay=replay, dtype=dtype, modules=modules,
              heldout_tokens=budget.heldout_tokens, seed=seed, log=log)
    rig.identity = ident
    return rig, log, out, budget


def base_setup(rig: Rig, args) -> dict:
    import torch

    return {"model": str(rig.model_dir), **getattr(rig, "identity", {}), "dtype": rig.dtype_name, "trainable_modules": list(rig.modules),
            "trainable_params": rig.n_trainable, "heldout_text": str(rig.heldout_path),
            "heldout_tokens": int(rig.heldout_ids.numel()) if rig.heldout_ids is not None else 0,
            "replay_text": str(rig.replay_path), "seed": rig.seed, "torch_threads": torch.get_num_threads(),
            "training_path": "plasticity.training.trainer.Trainer.step (context-frozen, fused LiveApollo)"}
