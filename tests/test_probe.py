"""The adversarial probe (scripts/probe.py --quick) against a real server it starts itself: every
category behaves, including a SIGKILL mid-training and a restart with the default config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models import model_dir

pytestmark = pytest.mark.vllm
PROBE = Path(__file__).resolve().parents[1] / "scripts" / "probe.py"


@pytest.mark.slow
def test_probe_quick_finds_no_misbehaviour(vllm_servers, tmp_path):
    vllm_servers.close()  # one server at a time on this machine: the probe starts its own
    # eager: the crash and restart test the journal and checkpoints, not the compiled graph
    r = subprocess.run([sys.executable, str(PROBE), "--serve", str(model_dir("qwen3-tiny")), "--quick",
                        "--eager", "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=2400)
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "misbehaved" in r.stdout and "\nall " in r.stdout
