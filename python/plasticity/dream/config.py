"""The ``[dream]`` section of ``plasticity.toml`` (path in ``PLASTICITY_CONFIG``).

```toml
[dream]
enabled = false            # start the background loop inside `plasticity serve` (the CLI runs regardless)
db = "memory.sqlite"       # the memory store (notes, cycles, candidates, train queue)
schedule = "continuous"    # "continuous": small cycles at cycles_per_hour; "sleep": only inside
                           # sleep_window (local time); "manual": only `plasticity dream --cycles N`
sleep_window = "01:00-05:00"   # HH:MM-HH:MM, may wrap midnight
cycles_per_hour = 60.0     # rate bound: cycle starts are at least 3600/cycles_per_hour s apart
max_cycles = 0             # per start of the background loop (0 = unlimited)
walk_length = 3            # colliding memories per cycle (2..5)
temperature = 0.9          # sampling temperature of the scenario and the response
top_p = 0.95
scenario_max_tokens = 64
response_max_tokens = 128
scenario_prompt = "..."    # must contain {notes}; see DEFAULT_SCENARIO_PROMPT
response_system = "..."    # system message when answering ({notes} allowed); "" = none
response_prefix = ""       # the assistant's answer starts with this text (an answer format)
judge = "rubric"           # "rubric" | "rule" | "endpoint", or a list: every one must pass
accept_threshold = 6.0     # judge score 0..10 needed to accept
novelty_threshold = 0.9    # cosine similarity (centred embeddings) at or above this to an
                           # accepted candidate -> rejected as a near duplicate
lexical_threshold = 0.8    # share of a candidate's word bigrams already in the accepted set
                           # at or above this -> rejected as a lexical duplicate (1.0 = off)
novelty_window = 2000      # accepted embeddings kept in memory (the most recent)
embedding = "server"       # "server": /v1/training/embed (the served model's hidden states);
                           # "hash": hashed word/character n-grams (no model, for tests)
replay_ratio = 0.0         # ignored (a warning when > 0): the server's trainer mixes replay
                           # into every batch ([training] replay_ratio); read so older files load
replay_source = ""         # ignored, as replay_ratio
seed = -1                  # -1 = a fresh seed each start
timeout_s = 120.0          # per HTTP request to the served model
model = ""                 # served model name; "" = the first of /v1/models
max_queue = 1000           # accepted-but-not-journaled bound: cycles wait while it is reached
submit_batch = 16          # examples per POST /v1/training/examples
capture = false            # opt-in: store every served chat/completion (prompt + answer) as a
                           # note in db (source "conversation"), the fast stage of the memory
capture_importance = 0.3   # importance of captured notes (0..1)

[dream.vllm_xargs]         # passed with every generation request (e.g. a steering vector)
steer = "calm"
steer_scale = 4.0

[dream.rubric]             # judge = "rubric": the served model answers the rubric
prompt = "..."             # {notes} {scenario} {response}; must ask for a 0-10 score
max_tokens = 8
temperature = 0.0
score = "text"             # "text": read the 0-10 score from the answer; "yes_no": the prompt asks a
                           # yes/no question and the score is 10 * P(yes) / (P(yes) + P(no)) from the
                           # first answer token's top logprobs (small models such as SmolLM2-135M
                           # never answer with a bare number; see docs/dream.md)

[dream.rule]               # judge = "rule"
min_chars = 20             # scenario and response each
max_chars = 4000
must_match = []           # regexes the response must match (re.search)
must_not_match = []       # regexes neither the scenario nor the response may match
max_repeat = 0.5           # largest share of repeated word 3-grams in a text
min_overlap = 1            # content words (4+ letters) shared with the notes

[dream.endpoint]           # judge = "endpoint": any OpenAI-compatible chat endpoint
url = "http://127.0.0.1:9000/v1"   # base URL (…/v1); /chat/completions is appended
model = "judge"
api_key_env = ""           # name of the environment variable holding its key ("" = none)
timeout_s = 30.0
prompt = "..."             # as [dream.rubric]
max_tokens = 8
temperature = 0.0
score = "text"             # as [dream.rubric]
```
Relative paths are resolved against the config file's folder. Every key is checked
(type and range); a bad one raises :class:`DreamConfigError` naming it.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from plasticity import config as plasticity_config

ENV = plasticity_config.ENV

DEFAULT_SCENARIO_PROMPT = (
    "Here are some notes from memory:\n{notes}\n\n"
    "Write one new, concrete question or task that a user could bring and that needs all of "
    "these notes together. Write only the user's message.")
DEFAULT_RESPONSE_SYSTEM = "Answer the user. These notes may help:\n{notes}"
DEFAULT_RUBRIC_PROMPT = (
    "You grade training examples for a Python assistant. Notes it was built from:\n{notes}\n\n"
    "User message:\n{scenario}\n\nAssistant answer:\n{response}\n\n"
    "Is this a realistic question with a correct, helpful answer that uses the notes? "
    "Reply with one integer from 0 (useless) to 10 (excellent) and nothing else.")

# score = "yes_no": one yes/no question; the judge reads P(yes) and P(no) of the first answer token.
DEFAULT_YES_NO_PROMPT = (
    "Notes:\n{notes}\n\nQuestion: {scenario}\nAnswer: {response}\n\n"
    "Is the answer correct and helpful? Answer yes or no.")

JUDGES = ("rubric", "rule", "endpoint")
SCORE_MODES = ("text", "yes_no")
SCHEDULES = ("continuous", "sleep", "manual")
EMBEDDINGS = ("server", "hash")
WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class DreamConfigError(ValueError):
    """A ``[dream]`` value that cannot be used; the message names the file and key."""


@dataclass
class RubricConfig:
    prompt: str = DEFAULT_RUBRIC_PROMPT
    max_tokens: int = 8
    temperature: float = 0.0
    score: str = "text"


@dataclass
class RuleConfig:
    min_chars: int = 20
    max_chars: int = 4000
    must_match: tuple = ()
    must_not_match: tuple = ()
    max_repeat: float = 0.5
    min_overlap: int = 1


@dataclass
class EndpointConfig:
    url: str = ""
    model: str = ""
    api_key_env: str = ""
    timeout_s: float = 30.0
    prompt: str = DEFAULT_RUBRIC_PROMPT
    max_tokens: int = 8
    temperature: float = 0.0
    score: str = "text"


@dataclass
class DreamConfig:
    enabled: bool = False
    db: Path | None = None
    schedule: str = "continuous"
    sleep_window: str = "01:00-05:00"
    cycles_per_hour: float = 60.0
    max_cycles: int = 0
    walk_length: int = 3
    temperature: float = 0.9
    top_p: float = 0.95
    scenario_max_tokens: int = 64
    response_max_tokens: int = 128
    scenario_prompt: str = DEFAULT_SCENARIO_PROMPT
    response_system: str = DEFAULT_RESPONSE_SYSTEM
    response_prefix: str = ""
    judge: tuple = ("rubric",)
    accept_threshold: float = 6.0
    novelty_threshold: float = 0.9
    lexical_threshold: float = 0.8
    novelty_window: int = 2000
    embedding: str = "server"
    replay_ratio: float = 0.0
    replay_source: Path | None = None
    seed: int = -1
    timeout_s: float = 120.0
    model: str = ""
    max_queue: int = 1000
    submit_batch: int = 16
    capture: bool = False
    capture_importance: float = 0.3
    vllm_xargs: dict = field(default_factory=dict)
    rubric: RubricConfig = field(default_factory=RubricConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    # the [training] section of the same file (journal paths, token limits), if any
    training: object | None = field(default=None, compare=False)
    source: Path | None = field(default=None, compare=False)

    @property
    def min_interval_s(self) -> float:
        return 3600.0 / self.cycles_per_hour

    def in_window(self, hour: int, minute: int) -> bool:
        """Is local time ``hour:minute`` inside ``sleep_window`` (which may wrap midnight)?"""
        m = WINDOW_RE.match(self.sleep_window)
        a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        t = hour * 60 + minute
        return a <= t < b if a <= b else (t >= a or t < b)

    def to_json(self) -> dict:
        """A JSON-able summary (recorded with each cycle)."""
        return {"schedule": self.schedule, "cycles_per_hour": self.cycles_per_hour, "walk_length": self.walk_length,
                "temperature": self.temperature, "top_p": self.top_p, "judge": list(self.judge),
                "accept_threshold": self.accept_threshold, "novelty_threshold": self.novelty_threshold,
                "lexical_threshold": self.lexical_threshold,
                "embedding": self.embedding, "replay_ratio": self.replay_ratio,
                "response_prefix": self.response_prefix, "scenario_max_tokens": self.scenario_max_tokens,
                "response_max_tokens": self.response_max_tokens}


class _Checker:
    def __init__(self, where: str, sec: dict, prefix: str):
        self.where, self.sec, self.prefix = where, sec, prefix

    def bad(self, key: str, msg: str):
        raise DreamConfigError(f"{self.where}: {self.prefix}.{key} {msg}")

    def get(self, key, default):
        return self.sec.get(key, default)

    def bool(self, key, default):
        v = self.get(key, default)
        if not isinstance(v, bool):
            self.bad(key, f"must be true or false, got {v!r}")
        return v

    def int(self, key, default, lo=None, hi=None):
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(key, f"must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.bad(key, f"must be in [{lo}, {hi}], got {v}")
        return v

    def float(self, key, default, lo=None, hi=None, lo_open=False, hi_open=False):
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.bad(key, f"must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            self.bad(key, f"must be finite, got {v}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            self.bad(key, f"must be {'>' if lo_open else '≥'} {lo}, got {v}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            self.bad(key, f"must be {'<' if hi_open else '≤'} {hi}, got {v}")
        return v

    def str(self, key, default, *, choices=None, nonempty=False, max_len=20000):
        v = self.get(key, default)
        if not isinstance(v, str):
            self.bad(key, f"must be a string, got {v!r}")
        if "\x00" in v or len(v) > max_len:
            self.bad(key, f"must be at most {max_len} characters without NUL")
        if choices is not None and v not in choices:
            self.bad(key, f"must be one of {list(choices)}, got {v!r}")
        if nonempty and not v.strip():
            self.bad(key, "must not be empty")
        return v

    def regexes(self, key):
        v = self.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            self.bad(key, "must be a list of non-empty regex strings")
        for p in v:
            if len(p) > 2000:
                self.bad(key, "has a pattern longer than 2000 characters")
            try:
                re.compile(p)
            except (re.error, RecursionError, OverflowError) as e:
                self.bad(key, f"has an invalid regex {p[:80]!r}: {e}")
        return tuple(v)

    def unknown(self, known):
        extra = set(self.sec) - set(known)
        if extra:
            raise DreamConfigError(f"{self.where}: unknown [{self.prefix}] keys {sorted(extra)}")


def _template(c: _Checker, key: str, default: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    v = c.str(key, default)
    for name in required:
        if "{" + name + "}" not in v:
            c.bad(key, f"must contain {{{name}}}")
    for name in re.findall(r"\{(\w*)\}", v):
        if name not in allowed:
            c.bad(key, f"has an unknown placeholder {{{name}}} (allowed: {', '.join('{%s}' % a for a in allowed)})")
    return v


def _sub(sec, name, where) -> dict:
    v = sec.get(name, {})
    if not isinstance(v, dict):
        raise DreamConfigError(f"{where}: [dream.{name}] must be a table")
    return v


def _path(v, base: Path | None) -> Path | None:
    if v in (None, ""):
        return None
    p = Path(str(v)).expanduser()
    return (base / p).resolve() if (base is not None and not p.is_absolute()) else p.resolve()


_TOP = ("enabled", "db", "schedule", "sleep_window", "cycles_per_hour", "max_cycles", "walk_length", "temperature",
        "top_p", "scenario_max_tokens", "response_max_tokens", "scenario_prompt", "response_system",
        "response_prefix", "judge", "accept_threshold", "novelty_threshold", "lexical_threshold", "novelty_window", "embedding",
        "replay_ratio", "replay_source", "seed", "timeout_s", "model", "max_queue", "submit_batch", "vllm_xargs",
        "rubric", "rule", "endpoint", "capture", "capture_importance")


def from_dict(sec: dict, base: Path | None = None, source: Path | None = None, training=None) -> DreamConfig:
    """Validate a ``[dream]`` table (``training``: the file's TrainingConfig, if any)."""
    where = str(source or "config")
    if not isinstance(sec, dict):
        raise DreamConfigError(f"{where}: [dream] must be a table")
    c = _Checker(where, sec, "dream")
    c.unknown(_TOP)
    judge = sec.get("judge", "rubric")
    judges = (judge,) if isinstance(judge, str) else judge
    if not isinstance(judges, (list, tuple)) or not judges or not all(isinstance(j, str) for j in judges):
        c.bad("judge", f"must be one of {list(JUDGES)} or a non-empty list of them")
    for j in judges:
        if j not in JUDGES:
            c.bad("judge", f"must be one of {list(JUDGES)} (or a list of them), got {j!r}")
    if len(set(judges)) != len(judges):
        c.bad("judge", "lists a judge twice")
    for key in ("db", "replay_source"):
        v = sec.get(key, "")
        if not isinstance(v, str):
            c.bad(key, f"must be a path string, got {v!r}")
    window = c.str("sleep_window", "01:00-05:00")
    if not WINDOW_RE.match(window):
        c.bad("sleep_window", f"must be HH:MM-HH:MM (24 h), got {window!r}")
    xargs = sec.get("vllm_xargs", {})
    if not isinstance(xargs, dict) or not all(isinstance(k, str) for k in xargs):
        c.bad("vllm_xargs", "must be a table")
    notes_only = ("notes",)
    cfg = DreamConfig(
        enabled=c.bool("enabled", False),
        db=_path(sec.get("db"), base),
        schedule=c.str("schedule", "continuous", choices=SCHEDULES),
        sleep_window=window,
        cycles_per_hour=c.float("cycles_per_hour", 60.0, 0.0, 360000.0, lo_open=True),
        max_cycles=c.int("max_cycles", 0, 0, None),
        walk_length=c.int("walk_length", 3, 2, 5),
        temperature=c.float("temperature", 0.9, 0.0, 2.0),
        top_p=c.float("top_p", 0.95, 0.0, 1.0, lo_open=True),
        scenario_max_tokens=c.int("scenario_max_tokens", 64, 1, 4096),
        response_max_tokens=c.int("response_max_tokens", 128, 1, 4096),
        scenario_prompt=_template(c, "scenario_prompt", DEFAULT_SCENARIO_PROMPT, notes_only, notes_only),
        response_system=_template(c, "response_system", DEFAULT_RESPONSE_SYSTEM, (), notes_only),
        response_prefix=c.str("response_prefix", "", max_len=2000),
        judge=tuple(judges),
        accept_threshold=c.float("accept_threshold", 6.0, 0.0, 10.0),
        novelty_threshold=c.float("novelty_threshold", 0.9, 0.0, 1.0, lo_open=True),
        lexical_threshold=c.float("lexical_threshold", 0.8, 0.0, 1.0, lo_open=True),
        novelty_window=c.int("novelty_window", 2000, 1, 1_000_000),
        embedding=c.str("embedding", "server", choices=EMBEDDINGS),
        replay_ratio=c.float("replay_ratio", 0.0, 0.0, 1.0, hi_open=True),
        replay_source=_path(sec.get("replay_source"), base),
        seed=c.int("seed", -1, -1, 2**63 - 1),
        timeout_s=c.float("timeout_s", 120.0, 0.0, 86400.0, lo_open=True),
        model=c.str("model", "", max_len=1000),
        max_queue=c.int("max_queue", 1000, 1, 10_000_000),
        submit_batch=c.int("submit_batch", 16, 1, 64),
        capture=c.bool("capture", False),
        capture_importance=c.float("capture_importance", 0.3, 0.0, 1.0),
        vllm_xargs=dict(xargs),
        training=training,
        source=source,
    )
    if cfg.capture and cfg.db is None:
        c.bad("capture", "needs [dream] db (the memory store the conversations go to)")
    r = _Checker(where, _sub(sec, "rubric", where), "dream.rubric")
    r.unknown(("prompt", "max_tokens", "temperature", "score"))
    judge_fields = ("notes", "scenario", "response")
    mode = r.str("score", "text", choices=SCORE_MODES)
    cfg.rubric = RubricConfig(prompt=_template(r, "prompt", _rubric_prompt(mode), ("scenario", "response"), judge_fields),
                              max_tokens=r.int("max_tokens", 8, 1, 256),
                              temperature=r.float("temperature", 0.0, 0.0, 2.0), score=mode)
    u = _Checker(where, _sub(sec, "rule", where), "dream.rule")
    u.unknown(("min_chars", "max_chars", "must_match", "must_not_match", "max_repeat", "min_overlap"))
    cfg.rule = RuleConfig(min_chars=u.int("min_chars", 20, 0, 10_000_000), max_chars=u.int("max_chars", 4000, 1, 10_000_000),
                          must_match=u.regexes("must_match"), must_not_match=u.regexes("must_not_match"),
                          max_repeat=u.float("max_repeat", 0.5, 0.0, 1.0),
                          min_overlap=u.int("min_overlap", 1, 0, 1000))
    if cfg.rule.min_chars > cfg.rule.max_chars:
        u.bad("min_chars", f"({cfg.rule.min_chars}) must not exceed max_chars ({cfg.rule.max_chars})")
    e = _Checker(where, _sub(sec, "endpoint", where), "dream.endpoint")
    e.unknown(("url", "model", "api_key_env", "timeout_s", "prompt", "max_tokens", "temperature", "score"))
    emode = e.str("score", "text", choices=SCORE_MODES)
    cfg.endpoint = EndpointConfig(url=e.str("url", "", max_len=2000), model=e.str("model", "", max_len=1000),
                                  api_key_env=e.str("api_key_env", "", max_len=200),
                                  timeout_s=e.float("timeout_s", 30.0, 0.0, 3600.0, lo_open=True),
                                  prompt=_template(e, "prompt", _rubric_prompt(emode), ("scenario", "response"), judge_fields),
                                  max_tokens=e.int("max_tokens", 8, 1, 256),
                                  temperature=e.float("temperature", 0.0, 0.0, 2.0), score=emode)
    if "endpoint" in cfg.judge:
        if not re.match(r"^https?://[^\s/]+", cfg.endpoint.url):
            e.bad("url", f"must be an http(s) URL when judge includes 'endpoint', got {cfg.endpoint.url!r}")
    if cfg.endpoint.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cfg.endpoint.api_key_env):
        e.bad("api_key_env", "must be an environment variable name")
    return cfg


def _rubric_prompt(mode: str) -> str:
    return DEFAULT_YES_NO_PROMPT if mode == "yes_no" else DEFAULT_RUBRIC_PROMPT


def load(path: str | os.PathLike | None = None) -> DreamConfig:
    """The ``[dream]`` section of ``path`` (default ``$PLASTICITY_CONFIG``); defaults without a file.
    The file's ``[training]`` section is attached as ``cfg.training`` (journal paths, token limits)."""
    path = path or os.environ.get(ENV)
    if not path:
        return DreamConfig()
    p = Path(path).expanduser().resolve()
    try:
        with open(p, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise DreamConfigError(f"{p}: cannot read the config: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise DreamConfigError(f"{p}: not valid TOML: {e}") from None
    from plasticity.training import config as training_config

    training = None
    if "training" in doc:
        try:
            training = training_config.from_dict(doc["training"], base=p.parent, source=p)
        except (TypeError, ValueError) as e:
            raise DreamConfigError(str(e)) from None
    cfg = from_dict(doc.get("dream", {}), base=p.parent, source=p, training=training)
    if cfg.replay_source is None and training is not None and training.replay_source is not None:
        cfg.replay_source = training.replay_source
    return cfg
