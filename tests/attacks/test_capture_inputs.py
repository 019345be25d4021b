"""Hostile or odd traffic through the conversation-capture middleware: each is "not captured"
(skipped or failed, counted), the response reaches the client byte for byte, and nothing is
written to the memory store."""

from __future__ import annotations


import pytest

from capture_support import call, fake_vllm, middleware

from plasticity.memory import MemoryStore

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BIG = "x" * (1 << 20)

# name -> (path, request body, fake vLLM app, counter that must rise)
CASES = {
    "error_status": ("/v1/chat/completions", CHAT, fake_vllm("no", status=400), "skipped"),
    "request_not_json": ("/v1/chat/completions", b"{not json", fake_vllm(), "skipped"),
    "request_over_bound": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": BIG}]},
                           fake_vllm(), "skipped"),
    "answer_over_bound": ("/v1/chat/completions", CHAT, fake_vllm(BIG), "skipped"),
    "answer_not_json": ("/v1/chat/completions", CHAT, fake_vllm(raw=b"<html>"), "skipped"),
    "stream_garbage": ("/v1/chat/completions", {**CHAT, "stream": True}, fake_vllm(raw=b"data: {bad\n\n", stream=True),
                       "skipped"),
    "empty_answer": ("/v1/chat/completions", CHAT, fake_vllm("   "), "skipped"),
    "token_id_prompt": ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, fake_vllm(kind="text"), "skipped"),
    "batch_of_prompts": ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, fake_vllm(kind="text"), "skipped"),
    "messages_not_a_list": ("/v1/chat/completions", {"model": "m", "messages": "hi"}, fake_vllm(), "skipped"),
    "message_without_role": ("/v1/chat/completions", {"model": "m", "messages": [{"content": "hi"}]}, fake_vllm(),
                             "failed"),
    "answer_longer_than_a_note": ("/v1/chat/completions", CHAT, fake_vllm("y" * 300_000), "failed"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_not_captured_response_untouched(case, tmp_path):
    path, body, app, counter = CASES[case]
    db = tmp_path / "m.sqlite"
    cap, mw = middleware(db, app)
    plain_status, plain = call(app, path, body)  # the same request without the middleware
    status, got = call(mw, path, body)
    assert (status, got) == (plain_status, plain)
    assert cap.status()[counter] == 1 and cap.status()["captured"] == 0, cap.status()
    if db.exists():
        with MemoryStore(db) as s:
            assert s.list_notes(source="conversation") == []
