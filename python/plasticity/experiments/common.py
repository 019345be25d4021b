"""Shared machinery of the experiments: the model + Trainer rig, evaluation, reports.

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

import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXPERIMENTS", "Budget", "Example", "Rig", "Log", "models_root", "resolve_model", "corpus_paths",
           "write_outputs", "sanity_problems", "pct", "fmt", "line_plot", "bar_plot", "loss_function",
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

DEFAULT_MODEL = "qwen3-tiny"
HYBRID_MODEL = "qwen3_5-tiny"


# --------------------------------------------------------------------------- paths

MODELS_SUBDIR = Path(".cache") / "plasticity" / "models"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def models_root() -> Path:
    """Where scripts/build_test_models.py puts the local models: ``PLASTICITY_TEST_MODELS_DIR``, else
    ``.cache/plasticity/models`` in the current directory or the nearest parent that has one (the
    installed wheel lives in site-packages, far from the checkout), else the user cache
    (``~/.cache/plasticity/models``, where scripts/setup.sh builds them)."""
    env = os.environ.get("PLASTICITY_TEST_MODELS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / MODELS_SUBDIR).is_dir():
            return d / MODELS_SUBDIR
    return user_cache() / "models"


def user_cache() -> Path:
    """Where scripts/setup.sh builds the models now, outside every checkout: ``$PLASTICITY_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/plasticity``, else ``~/.cache/plasticity``."""
    env = os.environ.get("PLASTICITY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "plasticity"


def resolve_model(arg: str | None, default_name: str) -> Path:
    d = Path(arg).expanduser() if arg else models_root() / default_name
    if not (d / "config.json").is_file():
        hint = "" if arg else " (build the local test models with: .venv/bin/python scripts/build_test_models.py)"
        raise SystemExit(f"plasticity experiment: {d}: not a model folder (no config.json){hint}")
    return d.resolve()


def corpus_paths(model_dir: Path, heldout: str | None = None, replay: str | None = None) -> tuple[Path, Path]:
    """(held-out text, replay text): the options, else the local corpus beside the model, else the default one."""
    cands = [model_dir.parent / "corpus", models_root() / "corpus"]
    corpus = next((c for c in cands if (c / "heldout.jsonl").is_file() and (c / "train.txt").is_file()), None)
    h = Path(heldout) if heldout else (corpus / "heldout.jsonl" if corpus else None)
    r = Path(replay) if replay else (corpus / "train.txt" if corpus else None)
    for what, p in (("held-out", h), ("replay", r)):
        if p is None or not p.is_file():
            raise SystemExit(f"plasticity experiment: no {what} text found (looked in {[str(c) for c in cands]}); "
                             f"pass --{'heldout' if what == 'held-out' else 'replay'} FILE")
    return h.resolve(), r.resolve()


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


def relative_change(before: float, after: float) -> float:
    return (after - before) / before


def pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.{digits}f}%"


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits, 4)}g}"
    return str(x)


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing: fall back to the peak RSS
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@contextlib.contextmanager
def loss_function(fn):
    """Make ``Trainer.step`` use ``fn`` instead of ``frozen_context_loss`` (same loop otherwise)."""
    from plasticity.training import core

    old = core.frozen_context_loss
    core.frozen_context_loss = fn
    try:
        yield
    finally:
        core.frozen_context_loss = old


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
                seed: int | None = None, **over):
        """A fresh Trainer (fresh optimizer) on the rig's model; the previous one is released first."""
        from plasticity.training.queue import ExampleQueue
        from plasticity.training import config as tc, core

        self.release()
        cfg = tc.from_dict({"enabled": False, "lr": lr, "rank": rank, "scale_type": scale_type,
                            "replay_ratio": replay_ratio, "replay_source": str(self.replay_path),
                            "heldout": str(self.heldout_path), "seed": self.seed if seed is None else seed,
                            "threads": 1, **over})
        tr = core.Trainer(self.model, self.trainable, cfg, ExampleQueue(16), self.lock, tokenizer=self.tok)
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


# --------------------------------------------------------------------------- reports

def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def sanity_problems(result: dict) -> list[str]:
    """Problems in a result: non-finite numbers, rates outside [0, 1], perplexities ≤ 0, missing fields."""
    out = []
    for k in ("experiment", "answer", "rows", "setup", "quick", "seconds"):
        if k not in result:
            out.append(f"missing field {k!r}")
    if not isinstance(result.get("answer"), str) or len(result.get("answer", "")) < 20:
        out.append("answer is not a sentence")
    if not result.get("rows"):
        out.append("no rows")
    for path, v in _walk(result):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        leaf = path.rsplit(".", 1)[-1].split("[")[0]
        if not math.isfinite(v):
            out.append(f"{path} = {v} (not finite)")
        elif (leaf.endswith(("_pass", "_rate", "agreement"))) and not 0 <= v <= 1:
            out.append(f"{path} = {v} (a rate outside [0, 1])")
        elif (leaf == "ppl" or leaf.endswith("_ppl")) and not v > 0:
            out.append(f"{path} = {v} (perplexity ≤ 0)")
    return out


def _md_table(rows: list[dict], columns: list[tuple]) -> str:
    """Markdown table; ``columns``: (key, header[, formatter])."""
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c[0])
            cells.append(c[2](v) if len(c) > 2 and v is not None else fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: dict, *, title: str, question: str, columns: list[tuple],
                  notes: list[str] = (), extra_md: str = "") -> dict:
    """results.json + table.md + report.md into ``out`` (plots are already there, listed in result["plots"])."""
    from plasticity.eval.report import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault("plots", [])
    problems = sanity_problems(result)
    result["sanity_problems"] = problems
    table = _md_table(result["rows"], columns)
    (out / "table.md").write_text(table, encoding="utf-8")
    s = result["setup"]
    setup_lines = "\n".join(f"- {k}: `{json.dumps(v) if not isinstance(v, str) else v}`" for k, v in s.items())
    plots = "\n".join(f"![{p}]({p})" for p in result["plots"])
    md = [f"# Experiment `{result['experiment']}`: {title}", "",
          f"**Question.** {question}", "",
          f"**Answer (computed from the numbers below).** {result['answer']}", "",
          f"Run: {'--quick (small budget: a smoke test, not evidence)' if result['quick'] else 'full budget'}, "
          f"{result['seconds']:.0f} s wall, {result.get('created', '')}.", "",
          "## Results", "", table, extra_md, "", "## Plots", "", plots or "(matplotlib not installed: none)", "",
          "## Setup", "", setup_lines, ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if problems:
        md += ["## Sanity problems", ""] + [f"- {p}" for p in problems] + [""]
    md += ["Files: `results.json` (every number, per-step losses), `table.md`, the PNG plots.", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    write_json(out / "results.json", result)
    return result


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def line_plot(path: Path, series: dict[str, tuple[list, list]], *, title: str, xlabel: str, ylabel: str,
              logx: bool = False, logy: bool = False, right: dict[str, tuple[list, list]] | None = None,
              right_label: str = "", hline: float | None = None) -> str | None:
    """One line per series {label: (xs, ys)}; optional second y axis; returns the file name or None."""
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls=":")
    if "pass" in ylabel:
        ax.set_ylim(-0.03, 1.05)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for k, (label, (xs, ys)) in enumerate(right.items()):
            ax2.plot(xs, ys, marker="s", ms=3, ls="--", label=label, color=f"C{(len(series) + 1 + k) % 10}")
        ax2.set_ylabel(right_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p.name


def bar_plot(path: Path, groups: list[str], bars: dict[str, list[float]], *, title: str, ylabel: str,
             logy: bool = False) -> str | None:
    """Grouped bars: one group per x label, one bar per series."""
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(bars)) * 0.6 + 2), 3.8))
    n = max(1, len(bars))
    w = 0.8 / n
    for i, (label, vals) in enumerate(bars.items()):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(groups))]
        ax.bar(xs, vals, width=w, label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=15, ha="right", fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(bars) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p.name


def heatmap(path: Path, M: list[list[float]], rows: list[str], cols: list[str], *, title: str,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> str | None:
    if not _can_plot():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 1.2 + 0.6 * len(rows)))
    im = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    lo, hi = im.get_clim()
    for i, r in enumerate(M):
        for j, v in enumerate(r):
            x = (v - lo) / (hi - lo) if hi > lo else 0.5
            bright = x > 0.6 if not cmap.endswith("_r") else x < 0.4
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_title(title)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p.name


def finish(result: dict, log: Log, *, quick: bool, budget: Budget, setup: dict) -> dict:
    """Common fields of every result."""
    result["quick"] = bool(quick)
    result["budget"] = budget.as_dict()
    result["setup"] = setup
    result["seconds"] = log.elapsed()
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def start(args, name: str, budget: Budget, *, default_model: str = DEFAULT_MODEL, dtype: str = "float32",
          modules=("all-linear",)) -> tuple[Rig, Log, Path]:
    """Seeds, the progress log, the output folder and the rig, from the CLI arguments."""
    import torch

    torch.set_num_threads(int(getattr(args, "threads", None) or 1))
    seed = int(getattr(args, "seed", 0) or 0)
    torch.manual_seed(seed)
    random.seed(seed)
    log = Log(name, enabled=not getattr(args, "no_progress", False))
    model_dir = resolve_model(getattr(args, "model", None), default_model)
    heldout, replay = corpus_paths(model_dir, getattr(args, "heldout", None), getattr(args, "replay", None))
    out = Path(getattr(args, "out", None) or Path("experiments-out") / name)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{'quick' if args.quick else 'full'} budget {budget.as_dict()} -> {out}")
    rig = Rig(model_dir, heldout=heldout, replay=replay, dtype=dtype, modules=modules,
              heldout_tokens=budget.heldout_tokens, seed=seed, log=log)
    return rig, log, out


def base_setup(rig: Rig, args) -> dict:
    import torch

    return {"model": str(rig.model_dir), "dtype": rig.dtype_name, "trainable_modules": list(rig.modules),
            "trainable_params": rig.n_trainable, "heldout_text": str(rig.heldout_path),
            "heldout_tokens": int(rig.heldout_ids.numel()) if rig.heldout_ids is not None else 0,
            "replay_text": str(rig.replay_path), "seed": rig.seed, "torch_threads": torch.get_num_threads(),
            "training_path": "plasticity.training.trainer.Trainer.step (context-frozen, fused LiveApollo)"}


def panel_bars(path: Path, labels: list[str], metrics: dict[str, list[float]], *, title: str) -> str | None:
    """One small bar chart per metric (each on its own scale), one bar per label."""
    if not _can_plot():
        return None
    plt = _plt()
    k = len(metrics)
    fig, axes = plt.subplots(1, k, figsize=(max(6.0, 2.4 * k), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, vals) in zip(axes[0], metrics.items()):
        ax.bar(range(len(labels)), vals, color=[colors[i % len(colors)] for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.axhline(0, color="black", lw=0.6)
        if "pass" in name or "agreement" in name or "exact" in name:
            ax.set_ylim(0, 1.08)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p.name
