"""Bad `plasticity snapshot` arguments: exit 2 with a clear message before the server is contacted
(the URL points nowhere, so anything that got as far as HTTP would say "cannot reach"); and the
bodies the good ones send, checked against a stand-in server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from plasticity.cli import main

NOWHERE = ["--server", "http://127.0.0.1:9"]


@pytest.mark.parametrize("args,msg", [
    (["apply", "--method", "negate", "A", "--scale", "2"], "negate takes no --scale"),
    (["apply", "--method", "add", "A", "B"], "exactly one snapshot"),
    (["apply", "--method", "add", "A", "--density", "0.5"], "takes only --scale"),
    (["apply", "--method", "add", "A", "--relative-to", "N"], "takes only --scale"),
    (["apply", "--method", "ties", "A", "B", "--scale", "2"], "--scale is for add"),
    (["apply", "--method", "ties", "A", "B", "--weights", "1,x"], "--weights must be comma-separated numbers"),
    (["apply", "--method", "ties", "A", "B", "--lambda", "nan"], "lambda must be finite"),
    (["apply", "--method", "task_arithmetic", "A", "B", "--weights", "1,inf"], "weights must be finite"),
    (["apply", "--method", "add", "A", "--scale", "inf"], "scale must be finite"),
], ids=["negate_scale", "add_two", "add_density", "add_relative", "ties_scale", "weights_not_numbers",
        "lambda_nan", "weights_inf", "scale_inf"])
def test_bad_snapshot_arguments(capsys, args, msg):
    assert main(["snapshot", *args, *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert msg in err and "cannot reach" not in err, err


def test_unreachable_server_is_a_clear_error(capsys):
    assert main(["snapshot", "list", *NOWHERE]) == 2
    assert "cannot reach the server" in capsys.readouterr().err


@pytest.fixture
def standin():
    seen = []

    class H(BaseHTTPRequestHandler):
        def _answer(self, code, obj):
            raw = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):  # noqa: N802
            seen.append(("GET", self.path, None, self.headers.get("Authorization")))
            self._answer(200, {"snapshots": []})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("POST", self.path, body, self.headers.get("Authorization")))
            if body.get("snapshot") == "missing":
                return self._answer(404, {"error": {"message": "no snapshot 'missing'"}})
            self._answer(200, {"ok": True})

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()


def test_bodies_sent(standin, capsys):
    url, seen = standin
    on = ["--server", url, "--api-key", "k"]
    assert main(["snapshot", "save", "A", "--note", "n", *on]) == 0
    assert main(["snapshot", "list", *on]) == 0
    assert main(["snapshot", "show", "a/b", *on]) == 0
    assert main(["snapshot", "rollback", "base", *on]) == 0
    assert main(["snapshot", "apply", "--method", "negate", "A", *on]) == 0
    assert main(["snapshot", "apply", "--method", "ties", "A", "B", "--density", "0.5", "--lambda", "1.5",
                 "--weights", "1,0.5", "--normalize", "false", "--relative-to", "N", *on]) == 0
    assert [s[:3] for s in seen] == [
        ("POST", "/v1/snapshots", {"name": "A", "note": "n"}),
        ("GET", "/v1/snapshots", None),
        ("GET", "/v1/snapshots/a%2Fb", None),
        ("POST", "/v1/rollback", {"to": "base"}),
        ("POST", "/v1/snapshots/apply", {"method": "negate", "snapshot": "A"}),
        ("POST", "/v1/snapshots/apply", {"method": "ties", "snapshots": ["A", "B"], "weights": [1.0, 0.5],
                                         "lambda": 1.5, "density": 0.5, "normalize": False, "relative_to": "N"}),
    ]
    assert all(s[3] == "Bearer k" for s in seen)


def test_server_refusal_exits_2_with_its_message(standin, capsys):
    url, _ = standin
    assert main(["snapshot", "apply", "--method", "add", "missing", "--server", url]) == 2
    assert "HTTP 404" in capsys.readouterr().err
