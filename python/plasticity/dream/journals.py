"""The training server's journal files as the dream loop reads them: incrementally (new lines only),
and matched to the loop's queue rows by the sha256 of their token ids, tokenised exactly as the
server tokenises (see the exactly-once protocol in :mod:`plasticity.dream.loop`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class _Tail:
    """Reads complete new lines of an append-only JSONL file (a torn last line is left for later)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.buf = Path(path), 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.buf + data
        lines = data.split(b"\n")
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


def token_key(context_ids, decision_ids) -> str:
    """The content key of a journal record: sha256 of its token ids."""
    return hashlib.sha256(json.dumps([list(map(int, context_ids)), list(map(int, decision_ids))],
                                     separators=(",", ":")).encode()).hexdigest()


class ServerTokens:
    """Tokenises an example exactly as ``POST /v1/training/examples`` does (training_routes.tokenize)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    @classmethod
    def load(cls, path: str) -> "ServerTokens":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def ids(self, context, decision: str, eos: bool = True) -> tuple[list[int], list[int]]:
        tok = self.tok
        if isinstance(context, str):
            ctx = tok(context, add_special_tokens=False)["input_ids"]
        else:
            ctx = tok.apply_chat_template(context, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        dec = tok(decision, add_special_tokens=False)["input_ids"]
        if eos and tok.eos_token_id is not None:
            dec = dec + [int(tok.eos_token_id)]
        return [int(t) for t in ctx], [int(t) for t in dec]

    def key(self, context, decision: str) -> str:
        return token_key(*self.ids(context, decision))


class JournalView:
    """What the server's journal files say: record ids (+ content keys) and trained ids."""

    def __init__(self, journal: Path):
        self.journal = Path(journal)
        self.done_path = self.journal.with_name(self.journal.name + ".done")
        self._acc, self._done = _Tail(self.journal), _Tail(self.done_path)
        self.ids: set[str] = set()
        self.key_ids: dict[str, list[str]] = {}  # content key -> server ids
        self.id_key: dict[str, str] = {}
        self.done: set[str] = set()
        self.foreign = 0  # records whose id the server assigned (not "mem-…"/"replay-…")

    def refresh(self) -> None:
        for r in self._acc.read():
            rid = r.get("id")
            if not isinstance(rid, str):
                continue
            self.ids.add(rid)
            if not rid.startswith(("mem-", "replay-")):
                self.foreign += 1
            try:
                k = token_key(r["context"], r["decision"])
            except (KeyError, TypeError, ValueError):
                continue
            self.key_ids.setdefault(k, []).append(rid)
            self.id_key[rid] = k
        for r in self._done.read():
            if isinstance(r.get("id"), str) and r.get("status", "trained") in ("trained", "skipped", "discarded"):
                self.done.add(r["id"])

    def done_status(self) -> dict[str, int]:
        return {"journal_records": len(self.ids), "done_records": len(self.done)}
