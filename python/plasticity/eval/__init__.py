"""Evaluation: continual-learning metrics, behaviour tests, held-out perplexity, reports.

Submodules (imported on demand, so ``plasticity.eval.metrics`` needs neither torch nor matplotlib):

- :mod:`plasticity.eval.metrics`   ACC / BWT / FWT / Forgetting from a score matrix; perplexity helpers
- :mod:`plasticity.eval.behaviour` behaviour test files (JSONL), runners, generators, held-out perplexity
- :mod:`plasticity.eval.report`    JSON report, PNG plots, progress bars
- :mod:`plasticity.eval.cli`       ``plasticity eval``

See docs/eval.md.
"""
