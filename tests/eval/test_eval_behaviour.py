"""Behaviour tests, generators, held-out perplexity, the shipped datasets and `plasticity eval`.

The server path is exercised against a small OpenAI-compatible stand-in on
127.0.0.1 that answers from the same tiny model with transformers (request and
answer shapes as vLLM's: ``/v1/models``, ``/tokenize``, ``/v1/completions`` with
``prompt_logprobs``, ``/v1/chat/completions``), so server and local numbers can be
compared exactly. The real vLLM server is not started here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from models import model_dir

from plasticity.eval import behaviour as bh
from plasticity.eval.behaviour import BehaviourFileError
from plasticity.eval.report import plots_available

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- file format

def test_parse_valid_file(tmp_path):
    p = _jsonl(tmp_path / "t.jsonl", [
        {"prompt": "Once upon", "expect": "time"},
        "",
        {"prompt": [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hi"}],
         "forbid": "(?i)password", "max_tokens": 5, "id": "chat"},
        {"prompt": "x", "expect": "^a", "forbid": "b", "max_tokens": 4096},
    ])
    raw = p.read_bytes()
    p.write_bytes(b"\xef\xbb\xbf" + raw)  # a UTF-8 BOM is accepted
    tests = bh.load_tests(p)
    assert [t.id for t in tests] == ["line-1", "chat", "line-4"]
    assert tests[0].prompt == "Once upon" and tests[0].max_tokens == bh.DEFAULT_MAX_TOKENS
    assert tests[0].prompt_value() == "Once upon" and tests[0].messages is None
    assert tests[1].prompt_value() == [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hi"}]
    assert tests[1].expect is None and tests[1].forbid == "(?i)password" and tests[1].max_tokens == 5
    assert tests[1].source.endswith("t.jsonl:3")
    assert tests[2].to_dict()["max_tokens"] == 4096


@pytest.mark.parametrize("line, msg", [
    ('{"prompt": "a"}', "line 2: neither 'expect' nor 'forbid'"),
    ('{"expect": "a"}', "line 2: missing 'prompt'"),
    ('{"prompt": "a", "expect": "("}', "line 2: 'expect' is not a valid regex"),
    ('{"prompt": "a", "expect": "a"', "line 2: invalid JSON"),
    ('{"prompt": 3, "expect": "a"}', "line 2: 'prompt' must be a string or a list"),
])
def test_validation_names_file_and_line(tmp_path, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok", "expect": "x"}\n' + line + "\n")
    with pytest.raises(BehaviourFileError, match=msg) as ei:
        bh.load_tests(p)
    assert str(p) in str(ei.value) and ei.value.line == 2


# --------------------------------------------------------------------------- run_tests

def test_run_tests_with_a_fake_generator():
    answers = {"greet": "  Hello there!\n", "secret": "The password is hunter2.", "list": "- a\n- b",
               "both": "I cannot share that."}
    calls = []

    def gen(prompt, max_tokens):
        key = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        calls.append((key, max_tokens))
        return answers[key]

    tests = [
        {"id": "g", "prompt": "greet", "expect": "^Hello"},                       # stripped before matching: pass
        {"id": "s", "prompt": [{"role": "user", "content": "secret"}], "forbid": "(?i)password", "max_tokens": 7},
        {"id": "l", "prompt": "list", "expect": r"(?m)^- b$"},                     # pass
        {"id": "b", "prompt": "both", "expect": "^I cannot", "forbid": "share"},  # expect ok, forbid hit: fail
        {"id": "x", "prompt": "list", "expect": "^Ticket"},                       # fail
    ]
    r = bh.run_tests(gen, tests)
    assert r["n"] == 5 and r["passed"] == 2 and r["failed"] == 3 and r["errors"] == 0
    assert r["pass_rate"] == pytest.approx(0.4)
    by = {x["id"]: x for x in r["results"]}
    assert by["g"]["passed"] and by["g"]["output"] == "  Hello there!\n" and by["g"]["reason"] == "ok"
    assert not by["s"]["passed"] and "forbidden pattern found: 'password'" in by["s"]["reason"]
    assert by["l"]["passed"]
    assert not by["b"]["passed"] and "forbidden" in by["b"]["reason"]
    assert not by["x"]["passed"] and by["x"]["reason"] == "expected pattern not found"
    assert calls[1] == ("secret", 7) and calls[0] == ("greet", bh.DEFAULT_MAX_TOKENS)
    assert by["s"]["prompt"] == [{"role": "user", "content": "secret"}]
    json.dumps(r)  # the result is JSON-ready


def test_run_tests_generator_errors_recorded_or_raised(tmp_path):
    def broken(prompt, n):
        raise ConnectionError("server gone")

    p = _jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "expect": "a"}, {"prompt": "b", "forbid": "b"}])
    r = bh.run_tests(broken, p)
    assert r["errors"] == 2 and r["passed"] == 0 and r["pass_rate"] == 0.0
    assert r["results"][0]["error"] == "ConnectionError: server gone" and r["results"][0]["output"] is None
    with pytest.raises(ConnectionError):
        bh.run_tests(broken, p, on_error="raise")
    r = bh.run_tests(lambda p, n: None, p)
    assert r["errors"] == 2 and "not str" in r["results"][0]["error"]
    assert bh.run_tests(lambda p, n: "", [])["pass_rate"] is None
    with pytest.raises(ValueError):
        bh.run_tests(broken, p, on_error="ignore")


def test_bad_file_never_calls_the_generator(tmp_path):
    p = _jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "expect": "a"}, {"prompt": "b"}])
    called = []
    with pytest.raises(BehaviourFileError, match="line 2"):
        bh.run_tests(lambda pr, n: called.append(pr) or "", p)
    assert called == []


def test_progress_bar_plain_stream():
    import io

    from plasticity.eval.report import progress

    buf = io.StringIO()
    assert list(progress(range(20), total=20, desc="t", stream=buf)) == list(range(20))
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("t [########################] 20/20") and len(lines) <= 12
    assert list(progress([1, 2], enabled=False)) == [1, 2]


# --------------------------------------------------------------------------- the tiny model, locally

@pytest.fixture(scope="module")
def tiny():
    g = bh.local_generator(model_dir("qwen3-tiny"))
    torch.set_num_threads(1)
    return g


CHAT = [{"role": "user", "content": "What is the status of ticket 7?"}]


def test_local_generator_greedy_chat_and_text(tiny):
    tok, model = tiny.tokenizer, tiny.model
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
    assert tiny.prompt_ids(CHAT) == ids.tolist()  # the chat template with the generation prompt
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        ref = model.generate(ids[None], max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    want = tok.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert tiny(CHAT, 4) == want == tiny(CHAT, 4)  # greedy: same answer twice
    text = "The for statement is used to"
    assert tiny.prompt_ids(text) == tok(text)["input_ids"]  # a text prompt is sent as is
    out = tiny(text, 3)
    assert isinstance(out, str) and len(tok(out, add_special_tokens=False)["input_ids"]) <= 4
    r = bh.run_tests(tiny, [{"prompt": CHAT, "expect": ".", "max_tokens": 2},
                            {"prompt": text, "forbid": "Ticket received", "max_tokens": 2}])
    assert r["n"] == 2 and r["errors"] == 0 and r["results"][1]["passed"]


def test_windows():
    assert bh.windows([[1, 2, 3, 4, 5], [6], [7, 8]], 2) == [[1, 2], [3, 4], [7, 8]]
    assert bh.windows([[1, 2, 3, 4, 5]], 3) == [[1, 2, 3], [4, 5]]
    # budget of 6 tokens: 3 + 2, then fewer than 2 left
    assert bh.windows([[1, 2, 3, 4, 5], [6, 7, 8]], 3, max_tokens=6) == [[1, 2, 3], [4, 5]]
    # a 1-token tail ([5]) is dropped; the next text gets the 2 tokens left
    assert bh.windows([[1, 2, 3, 4, 5], [6, 7, 8]], 4, max_tokens=6) == [[1, 2, 3, 4], [6, 7]]
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError):
            bh.windows([[1, 2]], bad)
    with pytest.raises(ValueError):
        bh.windows([[1, 2]], 4, max_tokens=1)


TEXTS = ["The for statement is used to iterate over the elements of a sequence.",
         "A dict maps keys to values. " * 30,
         "x"]


def test_heldout_ppl_local_by_hand(tiny):
    model, tok = tiny.model, tiny.tokenizer
    r = bh.heldout_ppl_local(model, tok, TEXTS, seq=64)
    nll, n = 0.0, 0
    for t in TEXTS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), 64):
            w = ids[i:i + 64]
            if len(w) < 2:
                continue
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss.item()
            nll += loss * (len(w) - 1)
            n += len(w) - 1
    assert r["tokens"] == n and r["texts"] == 3 and r["seq"] == 64 and r["windows"] >= 3
    assert r["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    capped = bh.heldout_ppl_local(model, tok, TEXTS, seq=64, max_tokens=20)
    assert capped["tokens"] <= 20
    with pytest.raises(TypeError):
        bh.heldout_ppl_local(model, tok, "one string")


# --------------------------------------------------------------------------- server path (stand-in)

class _Stub(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> bool:
        key = self.server.key
        self.server.auth_seen.append(self.headers.get("Authorization"))
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        if not self._auth():
            return
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        if not self._auth():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append((self.path, body))
        g = self.server.gen
        tok = g.tokenizer
        if self.path == "/tokenize":
            ids = tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
            return self._send(200, {"count": len(ids), "max_model_len": self.server.max_len, "tokens": ids})
        if self.path == "/v1/completions":
            prompt = body["prompt"]
            if body.get("prompt_logprobs") is not None:
                ids = prompt if isinstance(prompt, list) else tok(prompt)["input_ids"]
                with torch.no_grad():
                    lp = torch.log_softmax(g.model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
                plp = [None] + [{str(t): {"logprob": lp[i, t].item(), "rank": 1, "decoded_token": tok.decode([t])}}
                                for i, t in enumerate(ids[1:])]
                return self._send(200, {"choices": [{"index": 0, "text": "", "prompt_logprobs": plp}]})
            return self._send(200, {"choices": [{"index": 0, "text": g(prompt, body["max_tokens"])}]})
        if self.path == "/v1/chat/completions":
            out = g(body["messages"], body["max_tokens"])
            return self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": out}}]})
        self._send(404, {"detail": "Not Found"})


@pytest.fixture
def stub(tiny):
    srv = HTTPServer(("127.0.0.1", 0), _Stub)
    srv.gen, srv.key, srv.calls, srv.auth_seen, srv.max_len = tiny, "k3y", [], [], 2048
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_server_generator_requests_and_answers(stub, tiny):
    g = bh.server_generator(stub.url + "/v1/", api_key="k3y")
    assert g.model == "tiny" and g.base == stub.url  # first of /v1/models; "/v1/" stripped
    assert g(CHAT, 4) == tiny(CHAT, 4)
    assert g("The for statement", 3) == tiny("The for statement", 3)
    (p1, b1), (p2, b2) = stub.calls
    assert p1 == "/v1/chat/completions" and b1 == {"model": "tiny", "max_tokens": 4, "temperature": 0.0,
                                                   "messages": CHAT}
    assert p2 == "/v1/completions" and b2["prompt"] == "The for statement" and b2["temperature"] == 0.0
    assert set(stub.auth_seen) == {"Bearer k3y"}
    steered = bh.server_generator(stub.url, api_key="k3y", model="tiny", extra_body={"vllm_xargs": {"steer": "a"}})
    steered("x", 1)
    assert stub.calls[-1][1]["vllm_xargs"] == {"steer": "a"}


def test_server_errors_are_clear(stub):
    with pytest.raises(bh.EvalHTTPError, match=r"HTTP 401 \(wrong or missing --api-key\?\)"):
        bh.server_generator(stub.url, api_key="wrong")
    with pytest.raises(bh.EvalHTTPError, match="cannot reach the server"):
        bh.server_generator("http://127.0.0.1:9", timeout=5)
    with pytest.raises(ValueError, match="http"):
        bh.server_generator("localhost:8000")


def test_heldout_ppl_server_equals_local(stub, tiny):
    loc = bh.heldout_ppl_local(tiny.model, tiny.tokenizer, TEXTS, seq=64)
    srv = bh.heldout_ppl_server(stub.url, TEXTS, api_key="k3y", seq=64)
    assert (srv["tokens"], srv["windows"], srv["texts"]) == (loc["tokens"], loc["windows"], loc["texts"])
    assert srv["ppl"] == pytest.approx(loc["ppl"], rel=1e-5)
    toks = [b for p, b in stub.calls if p == "/tokenize"]
    assert len(toks) == 3 and all(b["add_special_tokens"] is False and b["model"] == "tiny" for b in toks)
    comp = [b for p, b in stub.calls if p == "/v1/completions"]
    assert len(comp) == loc["windows"]
    assert all(b["prompt_logprobs"] == 0 and b["max_tokens"] == 1 and isinstance(b["prompt"], list) for b in comp)
    # a token budget: same windows as locally, and the texts past the budget are not even tokenised
    stub.calls.clear()
    loc = bh.heldout_ppl_local(tiny.model, tiny.tokenizer, TEXTS, seq=64, max_tokens=20)
    srv = bh.heldout_ppl_server(stub.url, TEXTS, api_key="k3y", seq=64, max_tokens=20)
    assert srv["tokens"] == loc["tokens"] <= 20 and srv["ppl"] == pytest.approx(loc["ppl"], rel=1e-5)
    assert len([p for p, _ in stub.calls if p == "/tokenize"]) == 2  # 15 + 241 tokens ≥ 20: the 3rd is skipped
    # seq is capped to the server's max_model_len - 1
    stub.max_len = 17
    assert bh.heldout_ppl_server(stub.url, TEXTS, api_key="k3y", seq=64)["seq"] == 16


# --------------------------------------------------------------------------- shipped datasets

def _prompt_text(p):
    return p if isinstance(p, str) else json.dumps(p, sort_keys=True)


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    from transformers import AutoTokenizer

    from plasticity.training.routes import TrainingRoutes
    from plasticity.training import config as tc

    r = TrainingRoutes.__new__(TrainingRoutes)
    # The limits of the online-training test config (tests/training_support.py).
    r.cfg = tc.from_dict({"enabled": True, "max_decision_tokens": 64, "max_example_tokens": 512,
                          "journal": str(tmp_path_factory.mktemp("j") / "j.jsonl")})
    r.tok = AutoTokenizer.from_pretrained(model_dir("qwen3-tiny"))
    return r


def test_at_least_three_behaviours_ship():
    names = bh.list_behaviours()
    assert {"ticket-reply", "format-rule", "refusal"} <= set(names) and len(names) >= 3
    with pytest.raises(KeyError, match="unknown behaviour"):
        bh.behaviour_files("nope")


@pytest.mark.parametrize("name", bh.list_behaviours())
def test_behaviour_dataset_well_formed(name, routes):
    files = bh.behaviour_files(name)
    split = {}
    for k in ("train", "heldout"):
        rows = [json.loads(l) for l in files[k].read_text(encoding="utf-8").splitlines() if l.strip()]
        for i, ex in enumerate(rows):
            assert set(ex) == {"context", "decision", "id"}
            routes.tokenize(i, ex)  # accepted by POST /v1/training/examples under the test limits
        split[k] = rows
    train, held = split["train"], split["heldout"]
    assert 50 <= len(train) <= 200 and len(held) >= 12
    tp = {_prompt_text(ex["context"]) for ex in train}
    hp = {_prompt_text(ex["context"]) for ex in held}
    assert len(tp) == len(train) and len(hp) == len(held)  # no duplicates inside a split
    assert not tp & hp  # distinct prompts between splits
    ids = [ex["id"] for ex in train + held]
    assert len(set(ids)) == len(ids)
    tests = bh.load_tests(files["tests"])
    behaviour_tests = [t for t in tests if not t.id.startswith("control-")]
    controls = [t for t in tests if t.id.startswith("control-")]
    assert {_prompt_text(t.prompt_value()) for t in behaviour_tests} == hp  # one test per held-out prompt
    assert all(t.expect for t in behaviour_tests) and all(t.forbid and not t.expect for t in controls)
    assert not {_prompt_text(t.prompt_value()) for t in tests} & tp  # nothing tested is trained on
    # every held-out decision passes its own test (the tests check the behaviour, not something else)
    dec = {_prompt_text(ex["context"]): ex["decision"] for ex in held}
    for t in behaviour_tests:
        assert bh.check_output(t, dec[_prompt_text(t.prompt_value())])[0], t.id
    for t in controls:  # ... and the controls would catch the behaviour's reply
        assert not bh.check_output(t, held[0]["decision"])[0], t.id
    info = json.loads((files["tests"].parent / "info.json").read_text())
    assert info["name"] == name and info["train"] == len(train) and info["heldout"] == len(held)
    assert info["tests"] == len(tests)


def test_datasets_match_their_generator(capsys):
    spec = importlib.util.spec_from_file_location("build_behaviours", ROOT / "scripts" / "build_behaviours.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, capsys.readouterr().err
    assert sorted(mod.behaviours()) == bh.list_behaviours()


# --------------------------------------------------------------------------- plasticity eval

def _cli(argv):
    from plasticity.eval.cli import add_parser

    parser = argparse.ArgumentParser(prog="plasticity")
    sub = parser.add_subparsers(dest="cmd")
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _matrix(tmp_path):
    p = tmp_path / "sessions.json"
    p.write_text(json.dumps({"tasks": ["ticket-reply", "refusal"], "scores": [[1.0, 0.0], [0.25, 1.0]],
                             "baseline": [0.0, 0.0], "heldout_ppl": [264.0, 280.0, 301.5]}))
    return p


def _is_png(p: Path) -> bool:
    return p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_local_model_full_report(tmp_path, capsys):
    tests = _jsonl(tmp_path / "mine.jsonl", [{"prompt": CHAT, "forbid": "password", "max_tokens": 2},
                                             {"prompt": "The for statement", "expect": "^Ticket", "max_tokens": 2}])
    held = _jsonl(tmp_path / "held.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out"
    rc = _cli(["eval", "--model", str(model_dir("qwen3-tiny")), "--tests", str(tests), "refusal",
               "--max-tokens", "2", "--heldout", str(held), "--heldout-seq", "64",
               "--scores-matrix", str(_matrix(tmp_path)), "--out", str(out), "--no-progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"]["model_dir"] == str(model_dir("qwen3-tiny").resolve()) and rep["snapshot"] is None
    assert rep["heldout"]["texts"] == 3 and rep["heldout"]["ppl"] > 1
    files = rep["behaviour"]["files"]
    assert set(files) == {"mine", "refusal"}
    assert files["mine"]["n"] == 2 and files["mine"]["results"][1]["passed"] is False
    assert files["refusal"]["n"] == 23 and all(r["max_tokens"] == 2 for r in files["refusal"]["results"])
    n = files["mine"]["n"] + files["refusal"]["n"]
    assert rep["behaviour"]["pass_rate"] == pytest.approx((files["mine"]["passed"] + files["refusal"]["passed"]) / n)
    c = rep["continual"]
    # BWT = 0.25 - 1.0 ; FWT = R[0][1] - b1 = 0 ; forgetting = 1.0 - 0.25
    assert c["backward_transfer"] == pytest.approx(-0.75) and c["forward_transfer"] == pytest.approx(0.0)
    assert c["worst_forgetting"] == pytest.approx(0.75) and c["worst_forgetting_task"] == "ticket-reply"
    assert c["heldout_ppl"] == [264.0, 280.0, 301.5]
    if plots_available():  # scripts/setup.sh installs matplotlib; without it the report has no plots
        assert sorted(rep["plots"]) == ["pass_rates.png", "perplexity.png", "scores.png"]
        assert all(_is_png(out / f) for f in rep["plots"])
    else:
        assert rep["plots"] == []
    printed = capsys.readouterr().out
    assert "held-out perplexity" in printed and "backward transfer (BWT)   -0.7500" in printed


def test_cli_server_path(stub, tmp_path, capsys):
    tests = _jsonl(tmp_path / "tests.jsonl", [{"prompt": CHAT, "forbid": "password", "max_tokens": 2}])
    held = _jsonl(tmp_path / "held.jsonl", [{"text": t} for t in TEXTS[:2]])
    out = tmp_path / "o"
    rc = _cli(["eval", "--server", stub.url, "--api-key", "k3y", "--tests", str(tests), "--heldout", str(held),
               "--heldout-seq", "32", "--out", str(out), "--no-progress", "--no-plots"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"] == {"server": stub.url, "model": "tiny"} and rep["plots"] == []
    assert rep["behaviour"]["files"][tmp_path.name]["n"] == 1  # ".../NAME/tests.jsonl" is named NAME
    assert rep["heldout"]["seq"] == 32
    assert not list(out.glob("*.png"))


def test_cli_server_down_exits_1(tmp_path, capsys):
    tests = _jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "expect": "a"}])
    rc = _cli(["eval", "--server", "http://127.0.0.1:9", "--tests", str(tests), "--out", str(tmp_path / "o")])
    assert rc == 1 and "cannot reach the server" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_scores_matrix_only_and_single_session(tmp_path, capsys):
    out = tmp_path / "o"
    assert _cli(["eval", "--scores-matrix", str(_matrix(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"] is None and rep["behaviour"] is None and rep["continual"]["T"] == 2
    assert sorted(rep["plots"]) == (["perplexity.png", "scores.png"] if plots_available() else [])
    one = tmp_path / "one.json"
    one.write_text("[[0.5]]")
    assert _cli(["eval", "--scores-matrix", str(one), "--out", str(tmp_path / "o1")]) == 0
    rep = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert rep["continual"]["backward_transfer"] is None and rep["continual"]["forgetting"] is None
    assert "n/a (T = 1)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    ([], "nothing to do"),
    (["--tests", "refusal"], "need a model"),
    (["--model", "/nonexistent", "--tests", "refusal"], "not a model folder"),
    (["--scores-matrix", "/nonexistent.json"], "cannot read"),
    (["--model", "MODEL", "--tests", "no-such-behaviour"], "not a shipped behaviour"),
    (["--model", "MODEL", "--tests", "BAD"], "line 1"),
    (["--model", "MODEL", "--heldout", "/nonexistent.jsonl"], "cannot read held-out"),
    (["--model", "MODEL", "--tests", "refusal", "--max-tokens", "0"], "--max-tokens"),
    (["--model", "MODEL", "--heldout", "HELD", "--heldout-seq", "1"], "--heldout-seq"),
])
def test_cli_bad_input_exit_2_writes_nothing(tmp_path, capsys, argv, msg):
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"prompt": "x"'])
    held = _jsonl(tmp_path / "held.jsonl", [{"text": "abc def"}])
    fake_model = tmp_path / "m"
    fake_model.mkdir()
    (fake_model / "config.json").write_text("{}")  # never loaded: validation comes first
    argv = [{"MODEL": str(fake_model), "BAD": str(bad), "HELD": str(held)}.get(a, a) for a in argv]
    out = tmp_path / "out"
    assert _cli(["eval", *argv, "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_cli_mutually_exclusive_source():
    with pytest.raises(SystemExit):
        _cli(["eval", "--server", "http://x", "--model", "y"])
