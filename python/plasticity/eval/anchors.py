"""Anchor prompts: generic chat questions in the test corpus's own style (the Python language
reference), none of them a shipped behaviour's trigger. Trained toward the base model's own
replies beside a behaviour (chat self-distillation), they keep a task vector from changing how
the model answers everything else; trained alone, they give the shared part of two runs."""

from __future__ import annotations

import random

ANCHOR_TOPICS = ("lambda", "for", "while", "try", "class", "import", "global", "yield", "with", "assert", "if",
                 "del", "return", "pass", "raise", "slicings", "numbers", "strings", "dict", "typesseq", "calls",
                 "booleans")
ANCHOR_QUESTIONS = ("What does the Python reference say about {}?", "Explain {} in Python.", "Tell me more about {}.",
                    "What is {}?", "Can you show me {}?", "How do I use {}?", "Why is {} useful?",
                    "Give me an example of {}.")


def anchor_prompts(n: int, seed: int = 7) -> list[str]:
    """``n`` questions, the same ones for the same ``seed``."""
    r = random.Random(seed)
    return [r.choice(ANCHOR_QUESTIONS).format(r.choice(ANCHOR_TOPICS)) for _ in range(n)]
