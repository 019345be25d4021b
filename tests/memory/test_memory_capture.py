"""Opt-in capture of served conversations into the memory store ([dream] capture = true): the
middleware copies request and answer, the store gets one note per conversation, the response is
never changed. (On the real server: tests/dream/test_dream_serving.py, the kill/restart test.)"""

from __future__ import annotations

import pytest

from capture_support import call, fake_vllm, middleware

from plasticity.dream.config import DreamConfigError, from_dict
from plasticity.memory import MemoryStore
from plasticity.server.capture import answer_of

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Any news on ticket 12?"}]}


def _notes(db):
    with MemoryStore(db) as s:
        return s.list_notes(source="conversation")


@pytest.mark.parametrize("stream", [False, True])
def test_chat_is_captured_and_answer_unchanged(tmp_path, stream):
    db = tmp_path / "m.sqlite"
    cap, mw = middleware(db, fake_vllm("Ticket received. An engineer will answer.", stream=stream))
    status, body = call(mw, "/v1/chat/completions", {**CHAT, "stream": stream})
    assert status == 200 and (b"Tick" in body if stream else b"Ticket received." in body)
    (n,) = _notes(db)
    assert n.text == "user: Any news on ticket 12?\nassistant: Ticket received. An engineer will answer."
    assert "conversation" in n.tags and n.importance == pytest.approx(0.3)
    assert cap.status()["captured"] == 1


def test_text_completion_captured(tmp_path):
    db = tmp_path / "m.sqlite"
    cap, mw = middleware(db, fake_vllm(" the loop ends.", kind="text", stream=True))
    call(mw, "/v1/completions", {"model": "m", "prompt": "A for statement", "stream": True})
    assert [n.text for n in _notes(db)] == ["user: A for statement\nassistant:  the loop ends."]


def test_dream_requests_and_other_paths_are_not_captured(tmp_path):
    db = tmp_path / "m.sqlite"
    cap, mw = middleware(db, fake_vllm())
    call(mw, "/v1/chat/completions", CHAT, headers=[(b"x-plasticity-source", b"dream")])
    call(mw, "/v1/embeddings", {"input": "x"})
    assert not db.exists() or _notes(db) == []
    assert cap.status()["captured"] == 0


def test_answer_of_stream_keeps_only_the_first_choice():
    sse = (b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}, {"index": 1, "delta": {"content": "X"}}]}\n\n'
           b'data: {"choices": [{"index": 0, "delta": {"content": "lo"}}]}\n\ndata: [DONE]\n\n')
    assert answer_of("chat", sse, True) == "Hello"


def test_capture_needs_a_db():
    with pytest.raises(DreamConfigError, match="capture needs"):
        from_dict({"capture": True})
    assert from_dict({"capture": True, "db": "m.sqlite"}).capture is True
