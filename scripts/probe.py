#!/usr/bin/env python3
"""An adversarial run against a live plasticity server; prints cases tried / behaved / misbehaved.

    # start a server itself (steering admin, training, snapshots on), crash-kill and restart it:
    .venv/bin/python scripts/probe.py --serve ~/.cache/plasticity/models/qwen3-tiny [--quick]
    # or probe a server you run (no crash part):
    .venv/bin/python scripts/probe.py --url http://127.0.0.1:8000 --api-key KEY

What "behaved" means per category:
- auth: every plasticity route (read from the server's own /openapi.json) refuses every wrong
  variant of the API key with 401;
- steering-routes: every write route of vLLM refuses a steering flag with 400, except
  /v1/completions and /v1/chat/completions which validate it; a refused flag leaves the next
  unsteered request's logprobs exactly as before (no steered K/V in the prefix cache);
- malformed: bad JSON, JSON 1000 deep, non-objects, bad UTF-8, a declared 300 MB body: a 4xx,
  never a 5xx, and the server stays healthy;
- values: absurd numbers, reserved names, duplicate example ids, huge vectors, big eval reports:
  refused with the documented 4xx, and nothing changes;
- concurrency: completions, examples, save/apply/rollback racing: no 5xx; after a rollback to the
  base the logprobs equal the start's;
- crash (``--serve`` only): SIGKILL mid-training, restart: every acknowledged example is trained
  after the restart and the taught reply is likelier than on the base model.
Bounded in requests and time (``--quick`` for CI); only talks to the server it is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

OWN = ("/v1/steering/", "/v1/training/", "/v1/snapshots", "/v1/rollback", "/v1/dream/")
REWRITE = ("/v1/completions", "/v1/chat/completions")
NO_BODY = ("/v1/training/pause", "/v1/training/resume", "/v1/training/discard")  # a body is ignored there
REPLY = "Ticket received. An engineer will answer within one day."
PROMPTS = [f"What is the status of ticket {n}?" for n in range(200, 208)]


class Probe:
    def __init__(self, url: str, key: str, private: list[str]):
        self.url, self.key, self.private = url.rstrip("/"), key, [p for p in private if p]
        self.results: list[tuple[str, str, bool, str]] = []
        self.model = None
        self.start_logprobs = None

    # ---- HTTP ----
    def req(self, method, path, body=None, *, raw=None, key="default", headers=None, timeout=120):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **(headers or {})}
        k = self.key if key == "default" else key
        if k is not None:
            h["Authorization"] = f"Bearer {k}"
        r = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(r, timeout=timeout) as resp:
                txt = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            txt, status = e.read(), e.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            return 0, f"{type(e).__name__}: {e}"
        try:
            return status, json.loads(txt or b"null")
        except ValueError:
            return status, txt.decode(errors="replace")[:300]

    def record(self, cat, name, ok, detail=""):
        self.results.append((cat, name, bool(ok), str(detail)[:300]))

    def expect(self, cat, name, got, codes, fragment=None):
        status, out = got
        text = json.dumps(out) if not isinstance(out, str) else out
        ok = status in codes and (fragment is None or fragment in text)
        leak = [p for p in self.private if p in text] if status >= 400 else []
        if leak:
            ok, text = False, f"server path in the answer: {leak[0]}"
        self.record(cat, name, ok, f"{status} {text[:200]}")
        return ok

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001
            return False

    def logprobs(self, prompt="The capital of", n=4):
        s, out = self.req("POST", "/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": n,
                                                      "temperature": 0.0, "logprobs": 1})
        if s != 200:
            return None
        return out["choices"][0]["logprobs"]["token_logprobs"]

    def reply_nll(self, prompts) -> float:
        """Mean NLL per token of REPLY after each chat-formatted prompt (echo + prompt_logprobs)."""
        tot = cnt = 0
        for p in prompts:
            s, t = self.req("POST", "/tokenize", {"model": self.model, "messages": [{"role": "user", "content": p}],
                                                  "add_generation_prompt": True})
            s2, r = self.req("POST", "/tokenize", {"model": self.model, "prompt": REPLY, "add_special_tokens": False})
            ids = t["tokens"] + r["tokens"]
            s3, out = self.req("POST", "/v1/completions", {"model": self.model, "prompt": ids, "max_tokens": 1,
                                                           "prompt_logprobs": 0, "temperature": 0.0})
            pl = out["choices"][0]["prompt_logprobs"]
            for tok_id, entry in zip(ids[len(t["tokens"]):], pl[len(t["tokens"]):]):
                tot -= entry[str(tok_id)]["logprob"]
                cnt += 1
        return tot / max(cnt, 1)

    # ---- categories ----
    def routes(self) -> dict[str, set[str]]:
        s, spec = self.req("GET", "/openapi.json", key=None)
        out = {}
        for path, ops in (spec.get("paths", {}) if isinstance(spec, dict) else {}).items():
            out[path] = {m.upper() for m in ops}
        return out

    def auth(self, routes):
        variants = {"no header": {}, "wrong key": {"Authorization": "Bearer wrong"},
                    "basic scheme": {"Authorization": f"Basic {self.key}"}, "empty bearer": {"Authorization": "Bearer "},
                    "key plus junk": {"Authorization": f"Bearer {self.key}x"},
                    "key prefix": {"Authorization": f"Bearer {self.key[:-1]}"},
                    "other header": {"X-API-Key": self.key}}
        for path, methods in sorted(routes.items()):
            if not path.startswith(OWN):
                continue
            p = path.replace("{name}", "probe-a")
            for m in sorted(methods & {"GET", "POST", "DELETE"}):
                for vname, h in variants.items():
                    got = self.req(m, p, {} if m == "POST" else None, key=None, headers=h)
                    self.expect("auth", f"{m} {path} [{vname}]", got, {401})
            for trick in (p + "/", p.upper(), "//" + p.lstrip("/"), p + "%00", p.replace("/v1/", "/v1/./")):
                got = self.req("GET", trick, key=None)
                self.expect("auth", f"GET {trick!r} [path trick, no key]", got, {401, 404, 405, 400})

    def steering_routes(self, routes, vector: str):
        base = self.logprobs()
        for path, methods in sorted(routes.items()):
            if "POST" not in methods or path.startswith(OWN) or "{" in path:
                continue
            body = {"model": self.model, "prompt": "The capital of", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}], "input": "hi",
                    "vllm_xargs": {"steer": vector, "steer_scale": 4}}
            if path in REWRITE:
                if path == "/v1/completions":
                    body.pop("messages")
                else:
                    body.pop("prompt")
                body.pop("input")
                self.expect("steering-routes", f"POST {path} validates the flag", self.req("POST", path, body), {200})
                bad = {**body, "vllm_xargs": {"steer": "no-such-vector"}}
                self.expect("steering-routes", f"POST {path} refuses a bad flag", self.req("POST", path, bad), {400})
                forged = {**body, "vllm_xargs": {"steer": vector, "steer_scale": "4.0", "steer_sig": "0" * 32}}
                self.expect("steering-routes", f"POST {path} refuses a client signature",
                            self.req("POST", path, forged), {400})
            else:
                self.expect("steering-routes", f"POST {path} refuses steering", self.req("POST", path, body), {400},
                            "steering is supported on")
        after = self.logprobs()
        same = base is not None and after is not None and max(abs(a - b) for a, b in zip(base, after)) < 1e-5
        self.record("steering-routes", "no steered K/V reaches an unsteered request", same, f"{base} vs {after}")

    def malformed(self, routes, quick: bool):
        targets = [p for p, m in sorted(routes.items()) if "POST" in m and "{" not in p
                   and (p.startswith(OWN) or p in REWRITE or p in ("/invocations", "/v1/responses", "/v1/messages")
                        or not quick)]
        deep = b"[" * 1000 + b"]" * 1000
        bodies = {"invalid JSON": b"{", "1000 deep": b'{"x": ' + deep + b"}", "a list": b"[]", "a number": b"1",
                  "bad UTF-8": b'{"x": "\xff\xfe"}', "empty": b""}
        for p in targets:
            for name, raw in bodies.items():
                got = self.req("POST", p, raw=raw)
                ok = set(range(200, 500)) if p in NO_BODY else set(range(400, 500))
                self.expect("malformed", f"POST {p} [{name}]", got, ok)
        for p in ("/v1/completions", "/v1/training/examples", "/v1/steering/vectors"):
            self.record("malformed", f"POST {p} [declares 300 MB]", self._declared_huge(p) == 413)
        self.record("malformed", "server healthy after malformed bodies", self.healthy())

    def _declared_huge(self, path) -> int:
        u = urllib.parse.urlparse(self.url)
        with socket.create_connection((u.hostname, u.port), timeout=20) as s:
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.key}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {300 << 20}\r\n\r\n").encode() + b"{")
            try:
                line = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
            except socket.timeout:
                return 0
        try:
            return int(line.split()[1])
        except (IndexError, ValueError):
            return 0

    def values(self, hidden: int):
        V = "values"
        for value in (3e38, 1e30):
            got = self.req("POST", "/v1/steering/vectors", {"name": "huge", "values": {"1": [value] * hidden}})
            self.expect(V, f"vector with values {value:g} refused", got, {400})
        self.expect(V, "vector list still answers after a huge vector", self.req("GET", "/v1/steering/vectors"), {200})
        for name in ("none", "off", ".", "..", "a\n", "a" * 65):
            got = self.req("POST", "/v1/steering/vectors", {"name": name, "values": {"1": [0.1] * hidden}})
            self.expect(V, f"vector name {name[:10]!r} refused", got, {400})
        for vals in ({"1": [0.1] * hidden, " 1": [0.2] * hidden}, {"\uff11": [0.1] * hidden},
                     {"1_0": [0.1] * hidden}, {"1": [True] * hidden}):
            got = self.req("POST", "/v1/steering/vectors", {"name": "num", "values": vals})
            self.expect(V, f"vector values {list(vals)[-1]!r} refused", got, {400})
        got = self.req("POST", "/v1/steering/vectors", {"name": "deep", "values": json.loads("[" * 900 + "]" * 900)})
        self.expect(V, "vector values 900 deep refused", got, {400})
        for xargs in ({"steer": "probe", "steer_scale": "\uff14"}, {"steer": "probe", "steer_scale": "1_0"},
                      {"steer": "probe", "steer_layers": "\u0661"}, {"steer": "probe", "steer_scale": 1e308}):
            got = self.req("POST", "/v1/completions", {"model": self.model, "prompt": "x", "max_tokens": 1,
                                                       "vllm_xargs": xargs})
            self.expect(V, f"steering flag {xargs} refused", got, {400})
        # snapshots: two that differ from the base (a zero task vector would make any scale harmless)
        for snap in ("probe-a", "probe-b"):
            self.train([{"context": f"Probe question {snap} {i}", "decision": "Probe answer."} for i in range(4)])
            self.expect(V, f"snapshot save {snap}", self.req("POST", "/v1/snapshots", {"name": snap}), {201, 409})
        before = self.logprobs()
        for body, code in (({"method": "add", "snapshot": "probe-a", "scale": 1e30}, None),
                           ({"method": "add", "snapshot": "probe-a", "scale": 1e308}, None),
                           ({"method": "task_arithmetic", "snapshots": ["probe-a", "probe-b"], "lambda": 1e30}, None),
                           ({"method": "task_arithmetic", "snapshots": ["probe-a", "probe-b"],
                             "weights": [True, 1]}, 400),
                           ({"method": "add", "snapshot": "probe-a", "scale": "1"}, 400)):
            got = self.req("POST", "/v1/snapshots/apply", body)
            self.expect(V, f"apply {json.dumps(body)[:70]} refused", got, {code} if code else set(range(400, 500)))
        after = self.logprobs()
        self.record(V, "refused edits changed nothing", before is not None and before == after, f"{before} {after}")
        self.expect(V, "snapshot name with a newline refused", self.req("POST", "/v1/snapshots", {"name": "x\n"}), {400})
        self.expect(V, "5 MB eval report refused", self.req("POST", "/v1/snapshots/probe-a/evals",
                                                            {"blob": "x" * (5 << 20)}), {413})
        # training
        self.expect(V, "lr 1e300 refused", self.req("POST", "/v1/training/settings", {"lr": 1e300}), {400})
        self.expect(V, "example id once", self.req("POST", "/v1/training/examples",
                                                   {"context": "a", "decision": "b", "id": "probe-dup"}), {202})
        got = self.req("POST", "/v1/training/examples", {"context": "a", "decision": "b", "id": "probe-dup"})
        self.expect(V, "example id twice: 409", got, {409}, "probe-dup")
        got = self.req("POST", "/v1/training/examples", [{"context": "a", "decision": "b", "id": "probe-x"}] * 2)
        self.expect(V, "example id repeated in one body: 409", got, {409}, "probe-x")
        got = self.req("POST", "/v1/training/examples", {"context": "a", "decision": "b", "x" * (1 << 20): 1})
        self.record(V, "error messages are short", got[0] == 400 and len(json.dumps(got[1])) < 1000,
                    str(len(json.dumps(got[1]))))

    def train(self, examples, timeout=300):
        """Submit examples and wait until the trainer has done them."""
        s, st = self.req("GET", "/v1/training/status")
        target = st.get("examples_done", 0) + len(examples)
        self.req("POST", "/v1/training/resume")
        self.req("POST", "/v1/training/examples", examples)
        t0 = time.time()
        while time.time() - t0 < timeout:
            s, st = self.req("GET", "/v1/training/status")
            if s == 200 and st.get("examples_done", 0) >= target:
                return
            time.sleep(0.2)

    def concurrency(self, quick: bool):
        base = self.start_logprobs
        n = 16 if quick else 64
        ex = [{"context": f"Concurrent example {i}", "decision": "Fine."} for i in range(8)]
        jobs = [("POST", "/v1/completions", {"model": self.model, "prompt": f"def f{i}(", "max_tokens": 8})
                for i in range(n)]
        jobs += [("POST", "/v1/training/examples", ex)] * 2
        for i in range(3 if quick else 8):
            jobs += [("POST", "/v1/snapshots", {"name": f"race-{os.getpid()}-{i}"}),
                     ("POST", "/v1/snapshots/apply", {"method": "add", "snapshot": "probe-a", "scale": 0.5}),
                     ("POST", "/v1/rollback", {"to": "base"})]
        with cf.ThreadPoolExecutor(8) as pool:
            res = list(pool.map(lambda j: self.req(*j, timeout=600), jobs))
        fives = [(j[1], r[0]) for j, r in zip(jobs, res) if r[0] >= 500 or r[0] == 0]
        self.record("concurrency", f"{len(jobs)} racing requests: no 5xx", not fives, fives[:5])
        # pause (a step in flight finishes first: the rollback runs on the training thread after it)
        self.req("POST", "/v1/training/pause")
        self.expect("concurrency", "rollback to base", self.req("POST", "/v1/rollback", {"to": "base"}), {200})
        after = self.logprobs()
        ok = base is not None and after is not None and max(abs(a - b) for a, b in zip(base, after)) < 1e-5
        self.record("concurrency", "after the race, rollback gives the base's logprobs", ok, f"{base} {after}")
        self.req("POST", "/v1/training/resume")
        self.record("concurrency", "server healthy after the race", self.healthy())

    def table(self) -> int:
        cats = {}
        for c, _, ok, _ in self.results:
            t = cats.setdefault(c, [0, 0])
            t[0 if ok else 1] += 1
        print(f"\n{'category':<18}{'tried':>7}{'behaved':>9}{'misbehaved':>12}")
        for c, (good, bad) in cats.items():
            print(f"{c:<18}{good + bad:>7}{good:>9}{bad:>12}")
        good = sum(v[0] for v in cats.values())
        bad = sum(v[1] for v in cats.values())
        print(f"{'all':<18}{good + bad:>7}{good:>9}{bad:>12}")
        for c, n, ok, d in self.results:
            if not ok:
                print(f"MISBEHAVED [{c}] {n}: {d}")
        return bad


# ---------------------------------------------------------------- a server of our own

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, work: Path, key: str, dtype: str, eager: bool = False):
        self.model, self.work, self.key, self.dtype, self.eager = model, work, key, dtype, eager
        self.proc = None
        self.port = _free_port()
        vecs = work / "vectors"
        vecs.mkdir(parents=True, exist_ok=True)
        self.config = work / "plasticity.toml"
        self.config.write_text(
            '[steering]\nadmin = true\nvectors_dir = "vectors"\nmax_abs_scale = 100.0\n\n'
            '[training]\nenabled = true\nlr = 1e-3\nrank = 8\nbatch_size = 2\nreplay_ratio = 0.0\n'
            'journal = "journal.jsonl"\nmax_decision_tokens = 64\nmax_example_tokens = 256\n')

    def start(self, timeout=600):
        env = {**os.environ, "PLASTICITY_CONFIG": str(self.config), "VLLM_PLUGINS": "plasticity,plasticity_http",
               "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--dtype", self.dtype,
               "--gpu-memory-utilization", "0.2", "--max-model-len", "1024", "--host", "127.0.0.1",
               "--port", str(self.port), "--api-key", self.key,
               "--worker-extension-cls", "plasticity.vllm.extension.WorkerExtension",
               *(["--enforce-eager"] if self.eager else [])]
        self.log = open(self.work / f"server-{int(time.time())}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, cwd=self.work)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"probe: the server exited during start-up (log {self.log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001
                time.sleep(1)
        raise SystemExit(f"probe: the server was not healthy in {timeout} s")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def crash(probe: Probe, srv: Server):
    """SIGKILL mid-training with the default config (no checkpoints), restart, check every
    acknowledged example is trained after the restart and the taught reply became likelier."""
    C = "crash"
    nll_base = probe.reply_nll(PROMPTS[:4])
    probe.req("POST", "/v1/training/resume")
    exs = [{"messages": [{"role": "user", "content": p}], "decision": REPLY, "id": f"crash-{r}-{i}"}
           for r in range(3) for i, p in enumerate(PROMPTS)]
    probe.expect(C, "examples accepted", probe.req("POST", "/v1/training/examples", exs), {202})
    t0 = time.time()
    done0 = 0
    while time.time() - t0 < 300:
        s, st = probe.req("GET", "/v1/training/status")
        done0 = st.get("examples_done", 0) if s == 200 else 0
        if done0 >= 2:
            break
        time.sleep(0.2)
    srv.kill()
    done_path = srv.work / "journal.jsonl.done"
    before = len(done_path.read_text().splitlines()) if done_path.exists() else 0
    accepted = [json.loads(l)["id"] for l in (srv.work / "journal.jsonl").read_text().splitlines()]
    srv.start()
    t0 = time.time()
    st = {}
    while time.time() - t0 < 900:
        s, st = probe.req("GET", "/v1/training/status")
        if s == 200 and st.get("examples_queued") == 0 and st.get("examples_done", 0) >= len(set(accepted)):
            break
        time.sleep(1)
    records = [json.loads(l) for l in done_path.read_text().splitlines()]
    given_up = {r["id"] for r in records if r.get("status") in ("discarded", "failed", "skipped")}
    trained_after = {r["id"] for r in records[before:] if r.get("status") == "trained"}
    missing = sorted(set(accepted) - given_up - trained_after)
    probe.record(C, f"killed after {done0} trained; every one of {len(set(accepted))} acknowledged examples is "
                    "trained after the restart", not missing, missing[:5])
    nll = probe.reply_nll(PROMPTS[:4])
    probe.record(C, "the taught reply is likelier after the restart than on the base model", nll < 0.8 * nll_base,
                 f"NLL {nll_base:.3f} -> {nll:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--url", help="a running server (the crash part is skipped)")
    g.add_argument("--serve", metavar="MODEL_DIR", help="start (and crash-restart) a server on this model")
    ap.add_argument("--api-key", default="probe-key")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--work", help="folder for the server's config, journal, snapshots (default: a temp one)")
    ap.add_argument("--quick", action="store_true", help="the bounded CI variant")
    ap.add_argument("--eager", action="store_true",
                    help="serve with --enforce-eager (no torch.compile warm-up: each start is about half as long)")
    args = ap.parse_args(argv)
    srv = None
    private = [str(Path.home()), tempfile.gettempdir(), sys.prefix]
    if args.serve:
        work = Path(args.work or tempfile.mkdtemp(prefix="plasticity-probe-")).resolve()
        srv = Server(args.serve, work, args.api_key, args.dtype, args.eager)
        srv.start()
        url = f"http://127.0.0.1:{srv.port}"
        private.append(str(work))
    else:
        url = args.url
    p = Probe(url, args.api_key, private)
    t0 = time.time()
    try:
        s, models = p.req("GET", "/v1/models")
        p.model = models["data"][0]["id"]
        p.start_logprobs = p.logprobs()  # the base model's, before the probe trains anything
        s, cat = p.req("GET", "/v1/steering/vectors")
        hidden = cat["hidden_size"]
        p.req("POST", "/v1/steering/vectors", {"name": "probe", "values": {"1": [0.5] * hidden}, "replace": True})
        routes = p.routes()
        p.auth(routes)
        p.steering_routes(routes, "probe")
        p.malformed(routes, args.quick)
        p.values(hidden)
        p.concurrency(args.quick)
        if srv is not None:
            crash(p, srv)
    finally:
        if srv is not None:
            srv.stop()
    bad = p.table()
    print(f"\nprobe finished in {time.time() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
