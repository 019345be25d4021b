"""tests/vllm_server.py, the server helper the tests, the demo and the benchmarks share: a start
interrupted by Ctrl-C (or a SIGTERM the demo turns into SystemExit) stops the server it launched.
The server runs in its own session, so nothing else would: one outlived a stopped demo here."""

import sys

import pytest

import vllm_server
from vllm_server import VLLMServer


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_start_stops_the_server(tmp_path, monkeypatch, interruption):
    srv = VLLMServer(tmp_path, log_path=tmp_path / "server.log")
    monkeypatch.setattr(srv, "command", lambda: [sys.executable, "-c", "import time; time.sleep(120)"])

    real_sleep, calls = vllm_server.time.sleep, []

    def interrupted(seconds):  # the first wait for /health is where Ctrl-C lands
        calls.append(seconds)
        if len(calls) == 1:
            raise interruption
        real_sleep(seconds)  # later ones: subprocess's own waits while stopping

    monkeypatch.setattr(vllm_server.time, "sleep", interrupted)
    with pytest.raises(interruption):
        srv.start()
    assert srv.proc.poll() is not None, "the server process is still running"
