"""Diversity of a set of generated examples.

- ``distinct_n`` (Li et al., 2016): distinct word n-grams / all word n-grams over the whole
  set (lower-cased word and punctuation tokens). 1.0 = no n-gram repeats anywhere.
- ``embedding_spread``: mean pairwise cosine distance (1 − cos) of the embeddings, after
  subtracting ``center`` (the mean embedding of the memory notes, see ``novelty.py``);
  0 = all the same direction, ≈ 1 = unrelated.

Both depend on the set's size (a larger set repeats more n-grams), so comparisons are
also reported ``size_matched`` (the mean over random subsets of the larger set with as
many texts as the smaller one) and, for distinct-n, ``token_matched`` (the larger set's
texts in random order, cut at as many n-grams as the smaller set has: the same number
of n-grams on both sides, so longer texts are not penalised either).
"""

from __future__ import annotations

import random

import numpy as np

from .judge import words
from .novelty import as_matrix, unit_rows


def ngrams(text: str, n: int) -> list[tuple]:
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def distinct_n(texts, n: int) -> float:
    """Distinct n-grams / total n-grams over all texts (0.0 for no n-grams)."""
    if n < 1:
        raise ValueError("n must be ≥ 1")
    total, seen = 0, set()
    for t in texts:
        g = ngrams(t, n)
        total += len(g)
        seen.update(g)
    return len(seen) / total if total else 0.0


def embedding_spread(vecs, center=None) -> float:
    """Mean pairwise cosine distance of the (centred) vectors; 0.0 for fewer than two."""
    if vecs is None or len(vecs) < 2:
        return 0.0
    a = unit_rows(as_matrix(vecs), None if center is None else np.asarray(center, dtype=np.float64))
    s = a @ a.T
    n = len(a)
    iu = np.triu_indices(n, 1)
    return float(np.mean(1.0 - s[iu]))


def diversity(texts, vecs=None, center=None) -> dict:
    texts = list(texts)
    out = {"n": len(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
           "distinct_3": distinct_n(texts, 3)}
    if vecs is not None:
        out["embedding_spread"] = embedding_spread(vecs, center)
    return out


def size_matched(texts, vecs=None, center=None, k: int = 0, trials: int = 50, seed: int = 0) -> dict:
    """Mean diversity over ``trials`` random subsets of size ``k`` (the whole set if k ≥ its size)."""
    texts = list(texts)
    if k <= 0 or k >= len(texts):
        return diversity(texts, vecs, center)
    rng = random.Random(seed)
    acc: dict[str, float] = {}
    for _ in range(trials):
        idx = rng.sample(range(len(texts)), k)
        d = diversity([texts[i] for i in idx], None if vecs is None else [vecs[i] for i in idx], center)
        for key, v in d.items():
            acc[key] = acc.get(key, 0.0) + v
    out = {key: v / trials for key, v in acc.items()}
    out["n"] = k
    out["trials"] = trials
    return out


def token_matched(texts, budgets: dict, trials: int = 50, seed: int = 0) -> dict:
    """distinct-n over exactly ``budgets[n]`` n-grams drawn text by text in random order (mean of
    ``trials``); a budget above the set's total uses the whole set."""
    texts = list(texts)
    rng = random.Random(seed)
    out = {}
    for n, budget in budgets.items():
        if budget <= 0 or not texts:
            out[f"distinct_{n}"] = 0.0
            continue
        acc = 0.0
        for _ in range(trials):
            order = texts[:]
            rng.shuffle(order)
            grams: list = []
            for t in order:
                grams += ngrams(t, n)
                if len(grams) >= budget:
                    break
            grams = grams[:budget]
            acc += len(set(grams)) / len(grams) if grams else 0.0
        out[f"distinct_{n}"] = acc / trials
        out[f"ngrams_{n}"] = budget
    return out
