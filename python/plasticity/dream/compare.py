"""``plasticity dream --compare``: the loop against naive sampling from the same memories, at the
same temperature and budget, measured with the diversity metrics of :mod:`plasticity.dream.metrics`."""

from __future__ import annotations

import random
import time

from . import metrics
from .loop import DreamLoop


def compare(loop: DreamLoop, k: int, *, seed: int = 0, log_fn=None) -> dict:
    """The loop (k cycles) vs naive sampling (k samples) from the same memories at the same
    temperature and the same budget (2 generations per item). Returns the figures."""
    rng = random.Random(seed)
    t0 = time.time()
    naive = []
    for i in range(k):
        naive.append(loop.naive_sample(rng))
    t_naive = time.time() - t0
    t0 = time.time()
    results = loop.run(k)
    t_loop = time.time() - t0
    acc = [r for r in results if r.accepted]
    n_texts = [DreamLoop._text(x["scenario"], x["response"]) for x in naive]
    a_texts = [DreamLoop._text(r.scenario, r.response) for r in acc]
    emb = loop.embedder
    n_vecs = emb.embed(n_texts) if n_texts else []
    a_vecs = emb.embed(a_texts) if a_texts else []
    center = loop.center
    rejected: dict[str, int] = {}
    for r in results:
        if not r.accepted:
            rejected[r.reason] = rejected.get(r.reason, 0) + 1
    return {
        "budget": k, "seconds": {"naive": round(t_naive, 1), "loop": round(t_loop, 1)},
        "embedding": getattr(emb, "name", type(emb).__name__),
        "loop": {"cycles": len(results), "accepted": len(acc), "accept_rate": len(acc) / max(1, len(results)),
                 "rejected": rejected, **metrics.diversity(a_texts, a_vecs or None, center)},
        "naive": metrics.diversity(n_texts, n_vecs or None, center),
        "naive_size_matched": metrics.size_matched(n_texts, n_vecs or None, center, k=len(acc), seed=seed),
        "naive_token_matched": metrics.token_matched(
            n_texts, {n: sum(len(metrics.ngrams(t, n)) for t in a_texts) for n in (1, 2, 3)}, seed=seed),
        "accepted_ids": [r.candidate_id for r in acc],
    }
