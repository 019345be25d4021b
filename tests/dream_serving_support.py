"""What the dream end-to-end tests on a real server share (qwen3-tiny with the rule judge in
tests/dream/test_dream_serving.py, SmolLM2 with the yes/no rubric judge in
tests/dream/test_dream_real_model.py): the ``[dream]`` section, the memory store, the behavioural
test (do greedy replies of held-out prompts start with the dream data's answer prefix?) and the
top-up that runs more dream cycles until enough scenarios were accepted."""

from __future__ import annotations

import json
import os
import time

import training_support as ts

PREFIX = "In short:"
# Held-out prompts: none of them is a scenario the loop writes (those come from the memory notes).
HELD = ["How does a while loop end?", "What is a generator?", "Explain the with statement.",
        "What does None mean?", "How do I define a class?", "What is a decorator?", "How do exceptions work?",
        "What is a list comprehension?", "What does import do?", "How are strings compared?",
        "What is a dict?", "How do I open a file?"]


def dream_section(root, *, judge: str = '"rule"', accept_threshold: float = 6.0, extra: str = "") -> str:
    """The ``[dream]`` section appended to a test server's plasticity.toml. ``judge`` is TOML
    (``'"rule"'`` or ``'["rule", "rubric"]'``); ``extra`` more TOML (e.g. a ``[dream.rubric]`` table)."""
    return f'''
[dream]
db = "{root / 'memory.sqlite'}"
judge = {judge}
accept_threshold = {accept_threshold}
temperature = 0.9
top_p = 1.0
scenario_max_tokens = 40
response_max_tokens = 16
response_prefix = "{PREFIX}"
cycles_per_hour = 360000.0
seed = 11
novelty_threshold = 0.9
lexical_threshold = 0.8
timeout_s = 60.0

[dream.rule]
min_chars = 20
max_repeat = 0.5
min_overlap = 1
{extra}'''


def store(srv):
    """The server's dream config and its memory store, filled with the sample graph once."""
    from plasticity.dream.config import load
    from plasticity.memory import MemoryStore, sample_graph_path

    cfg = load(srv.config)
    s = MemoryStore(cfg.db)
    if s.count_notes() == 0:
        s.import_jsonl(sample_graph_path())
    return cfg, s


def behaviour(srv) -> dict:
    """Greedy replies of the held-out prompts start with the prefix? + mean log-prob of the prefix."""
    from plasticity.eval.behaviour import parse_tests, run_tests, server_generator
    from plasticity.steering.train_in import Client

    tests = parse_tests("\n".join(json.dumps({"prompt": [{"role": "user", "content": p}], "expect": r"^In short",
                                              "max_tokens": 6, "id": f"held-{i}"}) for i, p in enumerate(HELD)))
    res = run_tests(server_generator(srv.url, api_key=ts.API_KEY, model=srv.served_model_name), tests)
    c = Client(srv.url, ts.API_KEY, srv.served_model_name)
    pre = c.tokenize(PREFIX)
    lps = []
    for p in HELD:
        ids = c.tokenize([{"role": "user", "content": p}])
        lps.append(sum(c.token_logprobs(ids + pre, len(ids), None)))
    return {"pass_rate": res["pass_rate"], "passed": res["passed"], "n": res["n"],
            "prefix_logprob": sum(lps) / len(lps), "outputs": [r["output"] for r in res["results"][:3]]}


def top_up(srv, target: int) -> dict:
    """More dream cycles (training running) until ``target`` candidates were accepted in all, then
    submit them: the loop as a server user runs it, with the store left by earlier tests."""
    from plasticity.dream.client import ServerClient
    from plasticity.dream.loop import DreamLoop

    cfg, s = store(srv)
    t0, cycles = time.time(), 0
    try:
        with DreamLoop(s, ServerClient(srv.url, ts.API_KEY, timeout=60), cfg) as loop:
            while len(s.candidates(accepted=True)) < target and cycles < 8 * target:
                loop.run_cycle()
                cycles += 1
                if cycles % 10 == 0:
                    loop.submit_pending()
            loop.submit_pending()
        return {"cycles": cycles, "accepted_total": len(s.candidates(accepted=True)),
                "queue": s.queue_counts(), "wall_s": round(time.time() - t0, 1)}
    finally:
        s.close()


# Hand-written candidates for ranking a judge: the same two notes, four correct answers, four wrong
# or meaningless ones. A judge that is any use scores every correct answer above every wrong one.
JUDGE_NOTES = ("A for statement iterates over the items of any iterable, such as a list, a string or a dict, "
               "in order. Its else clause runs only when the loop finishes without a break.",
               "break leaves the innermost enclosing for or while loop at once and skips its else clause; "
               "continue jumps to the next iteration of the loop.")
JUDGE_ITEMS = {
    "good": [("When does the else clause of a for loop run?", "Only when the loop finishes without a break."),
             ("What does break do inside a while loop?", "It leaves the innermost loop at once and skips its else clause."),
             ("What does continue do in a loop?", "It jumps straight to the next iteration of the loop."),
             ("What can a for statement iterate over?", "Any iterable, such as a list, a string or a dict, in order.")],
    "bad": [("When does the else clause of a for loop run?", "Bananas are yellow."),
            ("What does break do inside a while loop?", "It restarts the whole program from its first line."),
            ("What does continue do in a loop?", "continue continue continue continue"),
            ("What can a for statement iterate over?", "Only the integers from 1 to 10, never a list.")],
}


def judge_scores(judge) -> dict:
    """The judge's score of each of JUDGE_ITEMS (None where it gave none), by kind."""
    from plasticity.dream.judge import Item

    out = {}
    for kind, items in JUDGE_ITEMS.items():
        out[kind] = [judge.judge(Item(JUDGE_NOTES, q, f"{PREFIX} {a}")).score for q, a in items]
    return out


def reporter(report: dict, tag: str, filename: str):
    """``report(key, value)``: keep a figure in ``report``, print it (-s) and rewrite
    $PLASTICITY_BENCH_OUT/``filename`` with all of them when that is set."""
    def _report(key, value):
        report[key] = value
        print(f"\n[{tag}] {key}: {json.dumps(value, default=str)}")
        out = os.environ.get("PLASTICITY_BENCH_OUT")
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, filename), "w") as f:
                json.dump(report, f, indent=1, default=str)
    return _report
