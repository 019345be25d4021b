"""The dream loop's memory store: notes, typed links, dream cycles and the exactly-once train queue.

Everything lives in one SQLite file (see :mod:`plasticity.memory.store` and
``docs/memory.md``); ``plasticity memory ...`` is the command line
(:mod:`plasticity.memory.cli`).
"""

from .store import (
    SCHEMA_VERSION,
    Candidate,
    ImportResult,
    Link,
    MemoryStore,
    MemoryStoreError,
    Note,
    QueueItem,
    WalkStep,
    sample_graph_path,
)

__all__ = [
    "SCHEMA_VERSION", "Candidate", "ImportResult", "Link", "MemoryStore", "MemoryStoreError",
    "Note", "QueueItem", "WalkStep", "sample_graph_path",
]
