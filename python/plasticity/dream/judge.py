"""The training-signal judges of the dream loop: is a generated (scenario, response) worth training on?

Every judge maps an :class:`Item` to a :class:`Verdict` and never raises for bad
answers: a judge that times out, fails or answers garbage gives a verdict with no
score and a rejection reason, so nothing unjudged can reach the training queue.

- :class:`RubricJudge`: the served model itself answers a rubric prompt with a score
  0-10 (through the same OpenAI-compatible server, so steering applies too). With
  ``score = "yes_no"`` the prompt asks a yes/no question instead and the score is
  ``10 * P(yes) / (P(yes) + P(no))`` of the first answer token (:func:`yes_no_score`): a
  135M model never writes a bare number, but its first-token probabilities still rank
  answers.
- :class:`EndpointJudge`: the same rubric sent to any OpenAI-compatible chat endpoint
  (another server, a bigger model), with its own timeout.
- :class:`RuleJudge`: deterministic rules in the style of the behaviour tests: length
  bounds, regexes that must / must not match, a repetition limit, overlap with the notes.
- :class:`AllJudges`: several judges in order; the first rejection wins, the score is the
  lowest.

Rejection reasons: ``judge_timeout``, ``judge_garbage`` (no score could be read),
``judge_error`` (an HTTP error or an unreachable endpoint), ``rule:<name>`` (a rule failed).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from .client import DreamHTTPError, ServerClient, http_json, top_logprobs_of
from .config import EndpointConfig, RubricConfig, RuleConfig

MAX_JUDGE_ANSWER = 2000


@dataclass(frozen=True)
class Item:
    notes: tuple
    scenario: str
    response: str


@dataclass(frozen=True)
class Verdict:
    score: float | None          # 0..10, None when no score could be had
    reason: str = ""             # "" = passed this judge; otherwise why it is rejected
    detail: str = ""             # the judge's answer or the failed rule, for inspection


class Judge:
    name = "judge"

    def judge(self, item: Item) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError


# ---------------------------------------------------------------- scores from free text

_NUM = r"(\d+(?:\.\d+)?)"
_LEAD = re.compile(r"^[\s*_`\"'(\[#>]*(?:(?:score|rating|grade|mark)\s*(?:[:=]|is)?\s*)?[\s*_`\"'(\[]*" + _NUM
                   + r"(?![\d.]*\d)\s*(?:(?:/|out\s+of)\s*(\d+))?", re.I)
_ANY = re.compile(r"\b(?:score|rating|grade)\s*[:=]\s*[*_`\"']*" + _NUM + r"\s*(?:(?:/|out\s+of)\s*(\d+))?", re.I)


class GarbageAnswer(ValueError):
    pass


def parse_score(text) -> float:
    """Read a 0-10 score from a judge's answer: ``"7"``, ``"7/10"``, ``"Score: 8.5"``, ``"**9** - good"``,
    ``"4 out of 5"`` (scaled to 10). Anything else (no leading number, out of range, NaN) raises
    :class:`GarbageAnswer`."""
    if not isinstance(text, str) or not text.strip():
        raise GarbageAnswer("empty answer")
    t = text.strip()[:MAX_JUDGE_ANSWER]
    m = _LEAD.match(t) or _ANY.search(t)
    if m is None:
        raise GarbageAnswer(f"no score in {t[:80]!r}")
    v = float(m.group(1))
    if m.group(2) is not None:
        scale = int(m.group(2))
        if not 0 < scale <= 100 or v > scale:
            raise GarbageAnswer(f"score {m.group(0).strip()!r} has no usable scale")
        v = v * 10.0 / scale
    if not (math.isfinite(v) and 0.0 <= v <= 10.0):
        raise GarbageAnswer(f"score {v:g} is outside 0..10")
    return v


_YES, _NO = frozenset({"yes", "y"}), frozenset({"no", "n"})


def yes_no_score(top: dict[str, float]) -> float:
    """``10 * P(yes) / (P(yes) + P(no))`` from a first token's top logprobs, each answer summed over
    its spellings ("Yes", " yes", "YES."). :class:`GarbageAnswer` when neither is among them."""
    p_yes = p_no = 0.0
    for tok, lp in top.items():
        if not (isinstance(lp, (int, float)) and math.isfinite(lp) and lp <= 0.0):
            continue
        w = tok.strip().strip(".,!:;'\"").lower()
        if w in _YES:
            p_yes += math.exp(lp)
        elif w in _NO:
            p_no += math.exp(lp)
    if p_yes + p_no <= 0.0:
        raise GarbageAnswer(f"neither yes nor no among the first token's candidates {sorted(top)[:10]!r}")
    return 10.0 * p_yes / (p_yes + p_no)


def render(template: str, item: Item) -> str:
    """Fill ``{notes}``, ``{scenario}``, ``{response}`` in one pass (text containing braces is safe)."""
    notes = format_notes(item.notes)
    vals = {"notes": notes, "scenario": item.scenario, "response": item.response}
    return re.sub(r"\{(notes|scenario|response)\}", lambda m: vals[m.group(1)], template)


def format_notes(notes) -> str:
    return "\n".join(f"{i + 1}. {n}" for i, n in enumerate(notes))


def _http_reason(e: DreamHTTPError) -> str:
    return {"timeout": "judge_timeout", "garbage": "judge_garbage"}.get(e.kind, "judge_error")


class _ChatRubric(Judge):
    def __init__(self, prompt: str, max_tokens: int, temperature: float, score: str = "text"):
        self.prompt, self.max_tokens, self.temperature, self.score = prompt, max_tokens, temperature, score

    def _ask(self, text: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def _ask_first_token(self, text: str) -> dict[str, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def judge(self, item: Item) -> Verdict:
        try:
            if self.score == "yes_no":
                answer = self._ask_first_token(render(self.prompt, item))
            else:
                answer = self._ask(render(self.prompt, item))
        except DreamHTTPError as e:
            return Verdict(None, _http_reason(e), str(e)[:500])
        except Exception as e:  # noqa: BLE001 - a judge never crashes the loop
            return Verdict(None, "judge_error", f"{type(e).__name__}: {e}"[:500])
        try:
            if self.score == "yes_no":
                best = sorted(answer.items(), key=lambda kv: -kv[1])[:5]
                return Verdict(yes_no_score(answer), "", ", ".join(f"{t!r} {lp:.2f}" for t, lp in best)[:200])
            return Verdict(parse_score(answer), "", answer[:200])
        except GarbageAnswer as e:
            return Verdict(None, "judge_garbage", f"{e}; answer {str(answer)[:200]!r}")


class RubricJudge(_ChatRubric):
    """The served model answers the rubric (greedy by default)."""

    name = "rubric"

    def __init__(self, client: ServerClient, cfg: RubricConfig, xargs: dict | None = None):
        super().__init__(cfg.prompt, cfg.max_tokens, cfg.temperature, cfg.score)
        self.client, self.xargs = client, xargs

    def _ask(self, text: str) -> str:
        out, _, _ = self.client.chat([{"role": "user", "content": text}], temperature=self.temperature,
                                     max_tokens=self.max_tokens, xargs=self.xargs)
        return out

    def _ask_first_token(self, text: str) -> dict[str, float]:
        return self.client.first_token_logprobs([{"role": "user", "content": text}], xargs=self.xargs)


class EndpointJudge(_ChatRubric):
    """Any OpenAI-compatible chat endpoint (``url`` = its base, e.g. ``http://host:9000/v1``)."""

    name = "endpoint"

    def __init__(self, cfg: EndpointConfig):
        super().__init__(cfg.prompt, cfg.max_tokens, cfg.temperature, cfg.score)
        base = cfg.url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        self.model = cfg.model or None
        self.timeout = cfg.timeout_s
        self.key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None

    def _ask_first_token(self, text: str) -> dict[str, float]:
        self._model()
        _, doc = http_json(self.url, "POST", {"model": self.model, "messages": [{"role": "user", "content": text}],
                                              "temperature": 0.0, "max_tokens": 1, "logprobs": True,
                                              "top_logprobs": 20}, key=self.key, timeout=self.timeout)
        return top_logprobs_of(doc)

    def _model(self) -> None:
        if self.model is None:
            _, doc = http_json(self.base + "/models", key=self.key, timeout=self.timeout)
            try:
                self.model = str(doc["data"][0]["id"])
            except (TypeError, KeyError, IndexError):
                raise DreamHTTPError("judge endpoint: /models has no model; set [dream.endpoint] model")

    def _ask(self, text: str) -> str:
        self._model()
        _, doc = http_json(self.url, "POST", {"model": self.model, "messages": [{"role": "user", "content": text}],
                                              "temperature": self.temperature, "max_tokens": self.max_tokens},
                           key=self.key, timeout=self.timeout)
        try:
            out = doc["choices"][0]["message"]["content"]
        except (TypeError, KeyError, IndexError):
            raise DreamHTTPError(f"judge endpoint: unexpected body {str(doc)[:200]}") from None
        if not isinstance(out, str):
            raise DreamHTTPError("judge endpoint: content is not a string")
        return out


# ---------------------------------------------------------------- rules

WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")
CONTENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")
STOP = frozenset("""that this with from they them then than there their what when where which while would could
should about into over under also only just like some such more most other each very will have been were your
does done make made used uses using user users note notes answer question write these those being""".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def repeat_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none, → 1 = a loop)."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def content_words(text: str) -> set[str]:
    return {w.lower() for w in CONTENT_RE.findall(text)} - STOP


class RuleJudge(Judge):
    name = "rule"

    def __init__(self, cfg: RuleConfig):
        self.cfg = cfg
        self.must = [re.compile(p) for p in cfg.must_match]
        self.must_not = [re.compile(p) for p in cfg.must_not_match]

    def judge(self, item: Item) -> Verdict:
        c = self.cfg
        s, r = item.scenario.strip(), item.response.strip()
        checks: list[tuple[str, bool, str]] = []
        short = min(len(s), len(r))
        checks.append(("too_short", short >= c.min_chars, f"shortest text {short} < {c.min_chars} chars"))
        long_ = max(len(s), len(r))
        checks.append(("too_long", long_ <= c.max_chars, f"longest text {long_} > {c.max_chars} chars"))
        if long_ <= c.max_chars:  # regexes only on bounded text
            for p in self.must:
                checks.append(("must_match", p.search(r) is not None, f"response does not match {p.pattern!r}"))
            for p in self.must_not:
                hit = p.search(s) is not None or p.search(r) is not None
                checks.append(("must_not_match", not hit, f"matches {p.pattern!r}"))
        rep = max(repeat_share(s), repeat_share(r))
        checks.append(("repetitive", rep <= c.max_repeat, f"repeated 3-grams {rep:.2f} > {c.max_repeat}"))
        if c.min_overlap:
            shared = content_words(" ".join(item.notes)) & content_words(s + " " + r)
            checks.append(("off_topic", len(shared) >= c.min_overlap,
                           f"{len(shared)} words shared with the notes < {c.min_overlap}"))
        passed = sum(ok for _, ok, _ in checks)
        score = 10.0 * passed / len(checks)
        for name, ok, why in checks:
            if not ok:
                return Verdict(score, f"rule:{name}", why)
        return Verdict(score, "", f"{passed}/{len(checks)} rules")


class AllJudges(Judge):
    """Every judge must pass; the first rejection wins; the score is the lowest score."""

    name = "all"

    def __init__(self, judges: list[Judge]):
        if not judges:
            raise ValueError("AllJudges needs at least one judge")
        self.judges = judges
        self.name = "+".join(j.name for j in judges)

    def judge(self, item: Item) -> Verdict:
        scores, details = [], []
        for j in self.judges:
            try:
                v = j.judge(item)
            except Exception as e:  # noqa: BLE001 - a custom judge that raises is a rejection
                return Verdict(min(scores) if scores else None, "judge_error", f"{j.name}: {type(e).__name__}: {e}"[:500])
            if not isinstance(v, Verdict) or (v.score is not None and not (
                    isinstance(v.score, (int, float)) and math.isfinite(v.score) and 0 <= v.score <= 10)):
                return Verdict(None, "judge_garbage", f"{j.name}: returned {v!r}"[:500])
            if v.score is not None:
                scores.append(float(v.score))
            details.append(f"{j.name}: {v.detail}")
            if v.reason:
                return Verdict(min(scores) if scores else None, v.reason, "; ".join(details)[:1000])
        return Verdict(min(scores) if scores else None, "", "; ".join(details)[:1000])


def build_judge(cfg, client: ServerClient | None) -> Judge:
    """The judge(s) named by ``cfg.judge`` (a DreamConfig), always wrapped in :class:`AllJudges`."""
    out: list[Judge] = []
    for name in cfg.judge:
        if name == "rule":
            out.append(RuleJudge(cfg.rule))
        elif name == "rubric":
            if client is None:
                raise ValueError("the rubric judge needs the served model (a server URL)")
            out.append(RubricJudge(client, cfg.rubric, cfg.vllm_xargs or None))
        elif name == "endpoint":
            out.append(EndpointJudge(cfg.endpoint))
        else:
            raise ValueError(f"unknown judge {name!r}")
    return AllJudges(out)
