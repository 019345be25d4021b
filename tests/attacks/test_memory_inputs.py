"""Hostile notes, links and dream-loop records given to the memory store's API.

Each is refused with MemoryStoreError naming the problem, and the database is
unchanged afterwards (every table compared row by row).
"""

from __future__ import annotations

import contextlib
import math
import random
import sqlite3

import pytest

from plasticity.memory import MemoryStore, MemoryStoreError

MAX = 1000  # the configured max text size in these tests


def dump(path) -> dict:
    with contextlib.closing(sqlite3.connect(path)) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.sqlite", max_text_chars=MAX)
    s.add_note("first", ["a"], 0.5, key="first")
    s.add_note("second", ["b"], 0.5, key="second")
    s.add_link(1, 2, "related")
    cyc = s.start_cycle()
    s.add_candidate(cyc, [1, 2], "scenario", "response", 0.5, True, "ok")
    yield s
    s.close()


def refused(store, match, fn, *args, **kw):
    before = dump(store.path)
    with pytest.raises(MemoryStoreError, match=match):
        fn(*args, **kw)
    assert dump(store.path) == before


NOTE_CASES = {
    "empty_text": (("",), {}, "text is empty"),
    "whitespace_text": ((" \n\t ",), {}, "text is empty"),
    "text_not_a_string": ((42,), {}, "text must be a string"),
    "text_bytes": ((b"bytes",), {}, "text must be a string"),
    "text_none": ((None,), {}, "text must be a string"),
    "text_over_max_size": (("x" * (MAX + 1),), {}, f"more than the maximum of {MAX}"),
    "text_with_nul": (("a\x00b",), {}, "NUL"),
    "text_lone_surrogate": (("bad \ud800 text",), {}, "lone surrogate"),
    "importance_above_1": (("t",), {"importance": 1.5}, r"importance must be a number in \[0, 1\]"),
    "importance_negative": (("t",), {"importance": -0.1}, "importance"),
    "importance_nan": (("t",), {"importance": math.nan}, "importance.*nan"),
    "importance_inf": (("t",), {"importance": math.inf}, "importance.*inf"),
    "importance_string": (("t",), {"importance": "0.5"}, "importance must be a number.*str"),
    "importance_bool": (("t",), {"importance": True}, "importance must be a number.*bool"),
    "tags_a_string": (("t",), {"tags": "loops"}, "tags must be a list"),
    "tag_not_a_string": (("t",), {"tags": [1]}, "tag must be a string"),
    "tag_empty": (("t",), {"tags": [""]}, "invalid tag"),
    "tag_with_space": (("t",), {"tags": ["two words"]}, "invalid tag"),
    "tag_too_long": (("t",), {"tags": ["x" * 65]}, "invalid tag"),
    "too_many_tags": (("t",), {"tags": [f"t{i}" for i in range(33)]}, "more than the maximum of 32"),
    "key_duplicate": (("t",), {"key": "first"}, "key 'first' already exists"),
    "key_with_newline": (("t",), {"key": "a\nb"}, "invalid note key"),
    "key_padded": (("t",), {"key": " a"}, "invalid note key"),
    "key_too_long": (("t",), {"key": "k" * 201}, "invalid note key"),
    "source_injection": (("t",), {"source": "x'; DROP TABLE notes; --"}, "invalid source"),
    "created_at_garbage": (("t",), {"created_at": "yesterday"}, "not an ISO 8601 time"),
    "created_at_nan": (("t",), {"created_at": math.nan}, "out of range"),
}


@pytest.mark.parametrize("case", sorted(NOTE_CASES))
def test_bad_note_refused(store, case):
    args, kw, match = NOTE_CASES[case]
    refused(store, match, store.add_note, *args, **kw)


def test_huge_text_over_default_max(tmp_path):
    s = MemoryStore(tmp_path / "d.sqlite")
    refused(s, "more than the maximum of 100000", s.add_note, "x" * 100_001)
    s.close()


def test_update_with_bad_values_changes_nothing(store):
    refused(store, "text is empty", store.update_note, 1, text="  ")
    refused(store, "importance", store.update_note, 1, importance=math.nan)
    refused(store, "invalid tag", store.update_note, 1, tags=["ok", "not ok"])
    refused(store, "no note with id 99", store.update_note, 99, text="x")
    refused(store, "note id must be a positive integer", store.update_note, 0, text="x")
    refused(store, "note id must be a positive integer", store.get_note, True)


LINK_CASES = {
    "link_to_missing_note": ((1, 99), {}, "link target: no note with id 99"),
    "link_from_missing_note": ((99, 1), {}, "link source: no note with id 99"),
    "link_to_missing_key": (("first", "nope"), {}, "link target: no note with key 'nope'"),
    "self_link": ((1, 1), {}, "cannot link to itself"),
    "self_link_by_key": (("first", 1), {}, "cannot link to itself"),
    "duplicate_link": ((1, 2, "related"), {}, "already exists"),
    "link_type_injection": ((1, 2, "x' OR '1'='1"), {}, "invalid link type"),
    "link_type_empty": ((1, 2, ""), {}, "invalid link type"),
    "weight_zero": ((1, 2), {"weight": 0}, "weight"),
    "weight_negative": ((1, 2), {"weight": -1}, "weight"),
    "weight_nan": ((1, 2), {"weight": math.nan}, "weight"),
    "weight_huge": ((1, 2), {"weight": 1e300}, "weight"),
    "weight_string": ((1, 2), {"weight": "1"}, "weight"),
    "note_id_float": ((1.0, 2), {}, "must be a positive integer"),
    "note_id_negative": ((-1, 2), {}, "must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
def test_bad_link_refused(store, case):
    args, kw, match = LINK_CASES[case]
    refused(store, match, store.add_link, *args, **kw)


def test_sql_injection_strings_are_stored_verbatim(store):
    hostile = ["Robert'); DROP TABLE notes; --", "1 OR 1=1", "\" ; DELETE FROM links; --",
               "%' UNION SELECT * FROM meta --", "'; PRAGMA user_version = 99; --"]
    ids = [store.add_note(t, key=t[:50].strip()).id for t in hostile]
    assert [store.get_note(i).text for i in ids] == hostile
    assert store.get_note(hostile[0][:50].strip()).id == ids[0]
    store.update_note(ids[0], text=hostile[1])
    assert store.get_note(ids[0]).text == hostile[1]
    assert store.count_notes() == 2 + len(hostile) and store.count_links() == 1
    assert store.schema_version == 2 and store.integrity_check() == "ok"
    refused(store, "invalid tag", store.list_notes, tag="a' OR '1'='1")
    refused(store, "unknown order", store.list_notes, order="id; DROP TABLE notes")
    refused(store, "no note with key", store.get_note, "' OR 1=1 --")


def test_bad_list_arguments(store):
    refused(store, "limit", store.list_notes, limit=-1)
    refused(store, "offset", store.list_notes, offset="0")
    refused(store, "direction", store.links_of, 1, "sideways")


def test_bad_walks(store):
    refused(store, "walk length", store.walk, random.Random(0), 65)
    refused(store, "walk length", store.walk, random.Random(0), 2.0)
    refused(store, "needs at least 3 notes", store.walk, random.Random(0), 3)
    refused(store, "walk start: no note with key 'x'", store.walk, random.Random(0), 2, "x")


CAPTURE_CASES = {
    "no_messages": (([], "r"), "non-empty list"),
    "messages_not_a_list": (({"role": "user"}, "r"), "non-empty list"),
    "message_without_role": (([{"content": "x"}], "r"), "message 0"),
    "content_wrong_type": (([{"role": "user", "content": 5}], "r"), "message 0: content"),
    "text_part_not_string": (([{"role": "user", "content": [{"type": "text", "text": 1}]}], "r"), "text parts"),
    "empty_response": (([{"role": "user", "content": "x"}], " "), "response must be a non-empty string"),
    "response_not_string": (([{"role": "user", "content": "x"}], None), "response"),
    "conversation_over_max_size": (([{"role": "user", "content": "y" * MAX}], "r"), "more than the maximum"),
}


@pytest.mark.parametrize("case", sorted(CAPTURE_CASES))
def test_bad_capture_refused(store, case):
    args, match = CAPTURE_CASES[case]
    refused(store, match, store.capture_conversation, *args)


CANDIDATE_CASES = {
    "missing_cycle": ((99, [1], "s", "r", 0.5, True), {}, "no cycle with id 99"),
    "no_memory_ids": ((1, [], "s", "r", 0.5, True), {}, "memory_ids"),
    "memory_id_string": ((1, ["1"], "s", "r", 0.5, True), {}, "memory id must be"),
    "empty_scenario": ((1, [1], "", "r", 0.5, True), {}, "scenario is empty"),
    "empty_response": ((1, [1], "s", " ", 0.5, True), {}, "response is empty"),
    "scenario_over_max_size": ((1, [1], "s" * (MAX + 1), "r", 0.5, True), {}, "scenario has"),
    "score_nan": ((1, [1], "s", "r", math.nan, True), {}, "score"),
    "accepted_not_bool": ((1, [1], "s", "r", 0.5, 1), {}, "accepted must be a bool"),
    "bad_context_messages": ((1, [1], "s", "r", 0.5, True), {"context": [{"role": "user"}]}, "context"),
    "empty_decision": ((1, [1], "s", "r", 0.5, True), {"decision": ""}, "decision is empty"),
}


@pytest.mark.parametrize("case", sorted(CANDIDATE_CASES))
def test_bad_candidate_refused(store, case):
    args, kw, match = CANDIDATE_CASES[case]
    refused(store, match, store.add_candidate, *args, **kw)


def test_bad_queue_and_cycle_calls(store):
    refused(store, "queue state", store.queue, "done")
    refused(store, "cycle status", store.finish_cycle, 1, "paused")
    refused(store, "no running cycle with id 7", store.finish_cycle, 7)
    refused(store, "cycle config must be plain JSON", store.start_cycle, {"x": math.nan})
    refused(store, "cycle config must be plain JSON", store.start_cycle, {"x": object()})
