"""Start a real vLLM OpenAI server (CPU backend) in a subprocess, for tests.

    with VLLMServer(model_dir("qwen3-tiny")) as srv:
        srv.post("/v1/completions", {"prompt": "def", "max_tokens": 8})

Notes for this CPU-only setup:
* the ``vllm`` console script is broken in this env: we run
  ``python -m vllm.entrypoints.openai.api_server``;
* ``--gpu-memory-utilization`` is a fraction of host RAM on CPU: keep it small;
* start-up takes ~1-2 min on a 2-core box; never run two servers at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServerError(RuntimeError):
    pass


class VLLMServer:
    def __init__(self, model: str | Path, *, dtype: str = "float32", max_model_len: int = 1024,
                 extra_args: tuple[str, ...] = (), env: dict | None = None,
                 log_path: str | Path | None = None, startup_timeout: float = 300.0):
        self.model = str(model)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.extra_args = tuple(extra_args)
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.api_key: str | None = None  # sent by post() and served_model() when the server needs one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plugin_loaded(self) -> bool:
        """Whether the plasticity plugin loads (``VLLM_PLUGINS`` unset loads every installed one)."""
        names = {**os.environ, **self.env}.get("VLLM_PLUGINS")
        return names is None or "plasticity" in [n.strip() for n in names.split(",")]

    def command(self) -> list[str]:
        extension = []
        if self.plugin_loaded() and not any(a.startswith("--worker-extension-cls") for a in self.extra_args):
            # the production RPCs plus the test hooks (tests/worker_test_extension.py)
            extension = ["--worker-extension-cls", "worker_test_extension.WorkerExtensionForTests"]
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", self.model, "--dtype", self.dtype,
                "--gpu-memory-utilization", "0.2", "--max-model-len", str(self.max_model_len),
                "--host", "127.0.0.1", "--port", str(self.port), *extension, *self.extra_args]

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def start(self) -> "VLLMServer":
        self.port = free_port()
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache in host RAM
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update(self.env)
        tests_dir = str(Path(__file__).resolve().parent)  # the workers import the test extension from here
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH")) if p)
        t0 = time.time()
        with open(self.log_path, "wb") as log:
            # Own session/process group: stop() can signal the engine workers too.
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = t0 + self.startup_timeout
        try:
            self._wait_healthy(deadline)
        except BaseException:
            # Ctrl-C or a SIGTERM turned into SystemExit while it starts: the server has its own
            # session, so nothing else would stop it (one outlived a demo here, holding 3.5 GB)
            self.stop()
            raise
        self.startup_seconds = time.time() - t0
        return self

    def _wait_healthy(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise VLLMServerError(
                    f"vLLM exited with code {self.proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.time() > deadline:
                self.stop()
                raise VLLMServerError(
                    f"vLLM not healthy after {self.startup_timeout:.0f} s "
                    f"(log {self.log_path}):\n{self.log_tail()}")
            time.sleep(1.0)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, path: str, payload: dict, timeout: float = 120.0) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise VLLMServerError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}")

    def _headers(self) -> dict:
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"Content-Type": "application/json", **auth}

    def served_model(self) -> str:
        req = urllib.request.Request(self.url + "/v1/models", headers=self._headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["data"][0]["id"]
