"""What the memory store hands out (notes, links, walk steps, candidates, queue rows) and the one
error it raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class MemoryStoreError(ValueError):
    """Input or a file the memory store refuses; the message says what and where. Nothing was changed."""


@dataclass(frozen=True)
class Note:
    id: int
    text: str
    tags: tuple[str, ...]
    importance: float
    source: str
    key: str | None
    created_at: float
    updated_at: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d


@dataclass(frozen=True)
class Link:
    id: int
    src: int
    dst: int
    type: str
    weight: float
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WalkStep:
    """One note of a random walk and how it was reached: ``start``, ``link``
    (a neighbour of the previous note), ``backtrack`` (a neighbour of an earlier
    note of the walk) or ``random`` (no unvisited neighbour anywhere on the walk)."""

    note: Note
    how: str


@dataclass(frozen=True)
class ImportResult:
    note_ids: tuple[int, ...]
    links: int


@dataclass(frozen=True)
class Candidate:
    id: int
    cycle_id: int
    memory_ids: tuple[int, ...]
    scenario: str
    response: str
    score: float | None
    accepted: bool
    reason: str
    created_at: float
    queue_state: str | None  # None when not accepted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_ids"] = list(self.memory_ids)
        return d


@dataclass(frozen=True)
class QueueItem:
    id: int
    candidate_id: int
    journal_id: str
    context: Any  # a string or a list of chat messages
    decision: str
    state: str
    updated_at: float
