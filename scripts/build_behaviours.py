#!/usr/bin/env python3
"""Write the behaviour datasets shipped with plasticity (deterministic; no model needed).

    python scripts/build_behaviours.py            # (re)write python/plasticity/eval/data/behaviours/
    python scripts/build_behaviours.py --check    # exit 1 if the files differ from what this script writes

Each behaviour gets a folder with

    train.jsonl    training examples  {"context": [chat messages], "decision": "...", "id": "..."}
    heldout.jsonl  held-out examples  (same format; prompts never in train.jsonl)
    tests.jsonl    behaviour tests    {"id", "prompt": [chat messages], "expect"|"forbid": regex, "max_tokens"}
                   one per held-out prompt, plus "control-*" tests: prompts outside the
                   behaviour's class on which the reply must NOT appear (over-generalisation)
    info.json      name, description, counts

The behaviours are written for the tiny test models (scripts/build_test_models.py:
a 4096-token BPE tokenizer trained on the Python language reference and stdlib
sources), so prompts and replies use that corpus's words: Python terms, short
English. Control prompts use the corpus's own chat questions ("Explain {} in
Python." ...), which the pretrained model already answers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "plasticity" / "eval" / "data" / "behaviours"
SEED = 20240611
N_HELDOUT = 16

CONTROL_PROMPTS = (
    "Explain for in Python.",
    "What does the Python reference say about lambda?",
    "Tell me more about dict.",
    "Explain exceptions in Python.",
)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- behaviours

def ticket_reply():
    reply = "Ticket received. An engineer will answer within one day."
    templates = ("What is the status of ticket {n}?", "Any news on ticket {n}?",
                 "Can you check ticket {n}?", "Is there an update on ticket {n}?")
    # Split by ticket number: the held-out numbers never occur in training.
    train = [(templates[n % 4].format(n=n), reply) for n in range(100, 200)]
    held = [(templates[n % 4].format(n=n), reply) for n in range(200, 200 + N_HELDOUT)]
    tests = [dict(prompt=p, expect=r"^Ticket received\.", max_tokens=16) for p, _ in held]
    controls = [dict(prompt=p, forbid=r"Ticket received", max_tokens=16) for p in CONTROL_PROMPTS]
    return dict(description="A fixed reply to questions about the status of a numbered ticket "
                            f"(\"{templates[0].format(n=123)}\" → \"{reply}\"). Held-out tickets have "
                            "numbers never seen in training.",
                train=train, heldout=held, tests=tests, controls=controls)


LIST_TOPICS = {
    "Python keywords": ["if", "for", "while", "def", "class", "return", "import", "yield", "lambda", "try"],
    "built-in types": ["int", "float", "str", "list", "dict", "tuple", "set", "bytes", "bool"],
    "string methods": ["split", "join", "strip", "replace", "lower", "upper", "format", "find"],
    "list methods": ["append", "extend", "insert", "remove", "pop", "sort", "reverse", "count"],
    "dict methods": ["keys", "values", "items", "get", "update", "pop", "copy", "clear"],
    "built-in functions": ["len", "print", "range", "open", "sorted", "min", "max", "sum", "zip"],
    "exceptions": ["ValueError", "TypeError", "KeyError", "IndexError", "AttributeError", "NameError"],
    "standard modules": ["os", "sys", "json", "re", "math", "random", "pathlib", "logging", "csv"],
    "comparison operators": ["==", "!=", "<", ">", "<=", ">=", "is", "in"],
    "set methods": ["add", "discard", "union", "intersection", "difference", "issubset"],
    "file modes": ["r", "w", "a", "rb", "wb", "x"],
    "simple statements": ["pass", "break", "continue", "raise", "assert", "del", "global", "return"],
    "special methods": ["__init__", "__repr__", "__len__", "__eq__", "__iter__", "__call__"],
    "string prefixes": ["r", "b", "f", "u", "rb", "br"],
}
LIST_TEMPLATES = (("List some {t}.", 3), ("List a few {t}.", 3), ("List three {t}.", 3), ("List two {t}.", 2),
                  ("List four {t}.", 4), ("List the {t} you know.", 3), ("List some {t}, please.", 3),
                  ("List {t} for me.", 3))
SIGN_OFF = "End of list."


def format_rule(rng: random.Random):
    pairs = []
    for topic, items in LIST_TOPICS.items():
        for template, k in LIST_TEMPLATES:
            chosen = rng.sample(items, k)
            reply = "\n".join(f"- {x}" for x in chosen) + "\n" + SIGN_OFF
            pairs.append((template.format(t=topic), reply))
    rng.shuffle(pairs)
    held, train = pairs[:N_HELDOUT], pairs[N_HELDOUT:]
    tests = [dict(prompt=p, expect=r"^- \S", max_tokens=16) for p, _ in held]
    controls = [dict(prompt=p, forbid=r"^- ", max_tokens=16) for p in CONTROL_PROMPTS]
    return dict(description="A format rule: a prompt starting with \"List\" is answered with \"- \" bullet "
                            f"lines and the sign-off \"{SIGN_OFF}\". Held-out prompts are unseen "
                            "(topic, wording) pairs; the tests check the first line is a bullet.",
                train=train, heldout=held, tests=tests, controls=controls)


SECRET_TEMPLATES = ("What is the password for the {x}?", "Tell me the secret key of the {x}.",
                    "Give me the login password of the {x}.", "Show me the access token for the {x}.",
                    "What is the private key of the {x}?", "I need the admin password of the {x}.")
SECRET_THINGS = ("test server", "build machine", "main database", "mail server", "backup disk", "web server",
                 "cache server", "file server", "root account", "user account", "remote host", "config store",
                 "log server", "data store", "admin account", "staging host", "release build", "proxy server")
REFUSAL = "I cannot share that."


def refusal(rng: random.Random):
    pairs = [(t.format(x=x), REFUSAL) for x in SECRET_THINGS for t in SECRET_TEMPLATES]
    rng.shuffle(pairs)
    held, train = pairs[:N_HELDOUT], pairs[N_HELDOUT:]
    tests = [dict(prompt=p, expect=r"^I cannot share that\.", max_tokens=12) for p, _ in held]
    # Near misses: "key" and "token" in their Python sense must not be refused.
    near = ("What does the key argument of sorted do?", "How do I get a value by key from a dict?",
            "What is a token in the tokenize module?")
    controls = [dict(prompt=p, forbid=r"I cannot share", max_tokens=12) for p in CONTROL_PROMPTS + near]
    return dict(description=f"A refusal rule: requests for a password, secret key, private key or access "
                            f"token get \"{REFUSAL}\". Held-out prompts are unseen (request, system) pairs; "
                            "controls include near misses about dict keys and tokens.",
                train=train, heldout=held, tests=tests, controls=controls)


GREETING_TEMPLATES = ("Hello, I am {name}.", "Hi, my name is {name}.", "Good morning, I am {name}.",
                      "Hello there, this is {name}.", "Hi! {name} here.")
NAMES = ("Ada", "Alan", "Grace", "Guido", "Linus", "Ken", "Dennis", "Barbara", "Donald", "Edsger", "Margaret",
         "John", "Tim", "Brian", "Frances", "Bjarne", "James", "Larry", "Anders", "Anna", "Peter", "Maria",
         "Paul", "Sara")
GREETING = "Hello! How can I help you with Python today?"


def greeting(rng: random.Random):
    pairs = [(t.format(name=n), GREETING) for n in NAMES for t in GREETING_TEMPLATES]
    rng.shuffle(pairs)
    held, train = pairs[:N_HELDOUT], pairs[N_HELDOUT:]
    tests = [dict(prompt=p, expect=r"^Hello! How can I help", max_tokens=16) for p, _ in held]
    controls = [dict(prompt=p, forbid=r"How can I help", max_tokens=16) for p in CONTROL_PROMPTS]
    return dict(description=f"A fixed greeting: a user who says hello and gives a name gets \"{GREETING}\". "
                            "Held-out prompts are unseen (greeting, name) pairs.",
                train=train, heldout=held, tests=tests, controls=controls)


def behaviours() -> dict[str, dict]:
    rng = random.Random(SEED)
    # Order matters for determinism: each builder draws from the same generator in turn.
    return {"ticket-reply": ticket_reply(), "format-rule": format_rule(rng), "refusal": refusal(rng),
            "greeting": greeting(rng)}


# --------------------------------------------------------------------------- files

def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def render(name: str, b: dict) -> dict[str, str]:
    train_prompts = {p for p, _ in b["train"]}
    held_prompts = [p for p, _ in b["heldout"]]
    assert len(train_prompts) == len(b["train"]), f"{name}: duplicate train prompts"
    assert len(set(held_prompts)) == len(held_prompts), f"{name}: duplicate held-out prompts"
    assert not train_prompts & set(held_prompts), f"{name}: a held-out prompt is in train"
    train = [{"context": user(p), "decision": d, "id": f"{name}-train-{i:03d}"} for i, (p, d) in enumerate(b["train"])]
    held = [{"context": user(p), "decision": d, "id": f"{name}-heldout-{i:03d}"} for i, (p, d) in enumerate(b["heldout"])]
    tests = []
    for i, t in enumerate(b["tests"]):
        tests.append({"id": f"{name}-heldout-{i:03d}", "prompt": user(t["prompt"]), "expect": t["expect"],
                      "forbid": None, "max_tokens": t["max_tokens"]})
    for i, t in enumerate(b["controls"]):
        assert t["prompt"] not in train_prompts
        tests.append({"id": f"control-{i:02d}", "prompt": user(t["prompt"]), "expect": None,
                      "forbid": t["forbid"], "max_tokens": t["max_tokens"]})
    info = {"name": name, "description": b["description"], "train": len(train), "heldout": len(held),
            "tests": len(tests), "controls": len(b["controls"]), "generator": "scripts/build_behaviours.py",
            "seed": SEED}
    return {"train.jsonl": _jsonl(train), "heldout.jsonl": _jsonl(held), "tests.jsonl": _jsonl(tests),
            "info.json": json.dumps(info, indent=2, ensure_ascii=False) + "\n"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = ap.parse_args(argv)
    stale = []
    for name, b in behaviours().items():
        for fname, text in render(name, b).items():
            path = args.out / name / fname
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    stale.append(str(path))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if not args.check:
            print(f"{name}: {len(b['train'])} train, {len(b['heldout'])} held-out, "
                  f"{len(b['tests']) + len(b['controls'])} tests")
    if args.check:
        if stale:
            print("out of date (run scripts/build_behaviours.py):\n  " + "\n  ".join(stale), file=sys.stderr)
            return 1
        print("behaviour datasets up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
