"""The append-only, fsync'd JSONL journals (accepted examples, done records), an incremental
reader of them, and the text reader for replay and held-out files."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

# done-journal statuses of examples that are not in the weights and must not be trained again
NOT_TRAINED = ("skipped", "discarded", "failed")


def read_texts(path: Path) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(l)["text"] for l in text.splitlines() if l.strip()]
    return [t for t in text.split("\n<|endoftext|>\n") if t.strip()]


class Journal:
    """Append-only JSONL files, each record fsync'd before ``append`` returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash: that record was never acknowledged
        return out


class JournalTail:
    """Reads the complete new lines of an append-only JSONL journal, each call only what was
    appended since the last (a torn last line is kept back until its newline arrives)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.buf = Path(path), 0, b""

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()  # the part after the last newline: incomplete (or empty)
        out = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out
