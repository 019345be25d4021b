"""The novelty filter: reject a candidate too similar to one already accepted.

Embeddings (``[dream] embedding``):

- ``server`` (default): ``POST /v1/training/embed`` on the served model, the mean-pooled
  last hidden state of the **live** weights. No extra download or dependency (no model
  hub is reachable here, and a PyPI embedding package would need one or ship weights
  for another tokenizer), the same tokenizer and domain as the text being judged, and
  it follows the model as it trains. Its cost: a small LM's mean-pooled states are
  strongly anisotropic (on qwen3-tiny, raw cosine between unrelated notes averages
  0.85), so every vector is **centred** first: the mean embedding of the memory notes
  is subtracted (cosines of unrelated notes then average ≈ 0; a one-word edit stays
  ≈ 1.0).
- ``hash``: feature-hashed word 1-2-grams and character 3-grams (no model; for tests
  and for servers without training routes).

Similarity is cosine of centred vectors; a candidate whose highest similarity to the
accepted set is ≥ ``novelty_threshold`` is rejected as ``near_duplicate``; an exact
repeat of an accepted text (same normalised text) as ``duplicate``. A lexical check in
the spirit of Self-Instruct's ROUGE-L filter, but against the whole accepted set: a
candidate whose word bigrams already occur in the accepted set for a share ≥
``lexical_threshold`` brings little new text and is rejected as ``lexical_duplicate``
(1.0 turns it off). Memory is bounded: the filter keeps the ``novelty_window`` most
recent accepted vectors and their bigrams (counted, so evicting one is exact).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque

import numpy as np

from .client import ServerClient


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def bigrams(text: str) -> frozenset:
    w = re.findall(r"\w+|[^\w\s]", text.lower())
    return frozenset(zip(w, w[1:]))


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


class HashEmbedder:
    """Feature hashing of word unigrams/bigrams and character trigrams (L2-normalised)."""

    name = "hash"

    def __init__(self, dim: int = 512):
        self.dim = dim

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(self.dim, dtype=np.float64)
        w = re.findall(r"\w+", text.lower())
        feats = w + [a + " " + b for a, b in zip(w, w[1:])]
        t = normalise(text)
        feats += ["#" + t[i:i + 3] for i in range(max(0, len(t) - 2))]
        for f in feats:
            h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
            v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        n = np.linalg.norm(v)
        return (v / n if n > 0 else v).tolist()

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]


class ServerEmbedder:
    """Mean-pooled last hidden state of the served model's live weights (/v1/training/embed)."""

    name = "server"

    def __init__(self, client: ServerClient):
        self.client = client

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.client.embed(texts)


def as_matrix(vecs) -> np.ndarray:
    a = np.asarray(vecs, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise ValueError("embeddings must be a non-empty list of equal-length finite vectors")
    return a


def unit_rows(a: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    if center is not None:
        a = a - center
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


class NoveltyFilter:
    """Cosine similarity of centred embeddings against the most recent ``window`` accepted ones."""

    def __init__(self, threshold: float, window: int = 2000, center=None, lexical_threshold: float = 1.0):
        if not (0 < threshold <= 1) or not (0 < lexical_threshold <= 1):
            raise ValueError("novelty thresholds must be in (0, 1]")
        self.threshold, self.window = float(threshold), int(window)
        self.lexical_threshold = float(lexical_threshold)
        self._grams: deque = deque(maxlen=self.window)
        self._gram_count: dict = {}
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        self._vecs: deque = deque(maxlen=self.window)
        self._hashes: deque = deque(maxlen=self.window)
        self._hash_set: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._vecs)

    def _unit(self, vec) -> np.ndarray:
        v = np.asarray(vec, dtype=np.float64)
        if v.ndim != 1 or not np.all(np.isfinite(v)):
            raise ValueError("an embedding must be a finite vector")
        if self.center is not None:
            if self.center.shape != v.shape:
                raise ValueError(f"embedding size {v.shape[0]} != centre size {self.center.shape[0]}")
            v = v - self.center
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def max_similarity(self, vec) -> float:
        if not self._vecs:
            return -1.0
        u = self._unit(vec)
        return float(np.max(np.stack(self._vecs) @ u))

    def lexical_overlap(self, text: str) -> float:
        """Share of the text's word bigrams that already occur in the accepted window (0 = all new)."""
        g = bigrams(text)
        if not g or not self._gram_count:
            return 0.0
        return sum(1 for x in g if x in self._gram_count) / len(g)

    def check(self, text: str, vec) -> tuple[str, float]:
        """→ (reason, highest similarity): reason "" = novel, "duplicate", "lexical_duplicate"
        or "near_duplicate"."""
        if self._hash_set.get(text_hash(text)):
            return "duplicate", 1.0
        if self.lexical_threshold < 1.0 and self.lexical_overlap(text) >= self.lexical_threshold:
            return "lexical_duplicate", self.max_similarity(vec)
        s = self.max_similarity(vec)
        if not math.isfinite(s):
            return "near_duplicate", s
        return ("near_duplicate" if s >= self.threshold else ""), s

    def add(self, text: str, vec) -> None:
        if len(self._vecs) == self.window and self._hashes:
            old = self._hashes[0]
            self._hash_set[old] -= 1
            if not self._hash_set[old]:
                del self._hash_set[old]
            for x in self._grams[0] or ():
                self._gram_count[x] -= 1
                if not self._gram_count[x]:
                    del self._gram_count[x]
        u = self._unit(vec)
        h = text_hash(text)
        self._vecs.append(u)
        g = bigrams(text) if self.lexical_threshold < 1.0 else None
        self._grams.append(g)
        for x in g or ():
            self._gram_count[x] = self._gram_count.get(x, 0) + 1
        self._hashes.append(h)
        self._hash_set[h] = self._hash_set.get(h, 0) + 1
