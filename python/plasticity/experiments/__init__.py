"""One-command experiments that answer the open questions of docs/design/questions.md with a table, plots and a sentence.

``plasticity experiment NAME [--model DIR] [--quick] [--out DIR] [--seed N]``; ``plasticity experiment list``.
Each module has ``QUICK`` / ``FULL`` budgets and ``run(args) -> dict``; see docs/experiments.md.
"""

from .common import EXPERIMENTS

__all__ = ["EXPERIMENTS", "run"]


def run(name: str, **kw) -> dict:
    """Run experiment ``name`` in-process: ``run("lr-sweep", quick=True, out="dir")``; returns its result."""
    from .cli import namespace, run_one

    return run_one(name, namespace(**kw))
