"""``plasticity eval --snapshot``: evaluate a stored snapshot and record the figures in its metadata.

Two places a snapshot lives:

- **on a server** (``--server URL --snapshot NAME``): the live weights are rolled back to NAME
  (``POST /v1/rollback``, bit-identical), the tests run against the served model, and a summary is
  appended to the snapshot's ``evals`` (``POST /v1/snapshots/NAME/evals``). The server keeps serving
  NAME afterwards: save what you want to keep before (``POST /v1/snapshots``).
- **on disk** (``--model DIR --snapshot FOLDER``): FOLDER is a snapshot folder
  (``task_vector.safetensors`` + ``meta.json``, as the server writes them); τ is added to the base
  model in memory, checked first to be this model's (fingerprint, names, shapes), and the summary
  is appended to FOLDER/meta.json (temporary file + rename).

"Attached tests": without ``--tests``/``--heldout``, the files of the snapshot's last recorded eval
are run again (the first eval with ``--tests`` attaches them).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import urllib.parse
from pathlib import Path

from plasticity.http.client import request_json
from plasticity.taskvec.snapshot_folder import META_FILE, NAME_RULE, TV_FILE, is_snapshot_name

from . import behaviour as bh
from .generators import server_base_url



class SnapshotEvalError(ValueError):
    """The snapshot cannot be evaluated (unknown, from another model, unreadable): exit status 2."""


def summary(report: dict) -> dict:
    """The compact record appended to a snapshot's ``evals``: figures, not outputs."""
    beh = report.get("behaviour") or {}
    files = beh.get("files") or {}
    held = report.get("heldout") or {}
    return {
        "created": report.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "by": "plasticity eval",
        "source": report.get("source"),
        "heldout_ppl": held.get("ppl"),
        "heldout_file": held.get("file"),
        "heldout_tokens": held.get("tokens"),
        "pass_rate": beh.get("pass_rate"),
        "pass_rates": {k: v.get("pass_rate") for k, v in files.items()},
        "tests": {k: v.get("file") for k, v in files.items()},
        "errors": sum(int(v.get("errors") or 0) for v in files.values()),
    }


def attached_tests(meta: dict) -> tuple[list[str], str | None]:
    """(test files, held-out file) of the snapshot's last recorded eval that still exist here."""
    evals = meta.get("evals") or []
    for ev in reversed(evals):
        if not isinstance(ev, dict):
            continue
        tests = [f for f in (ev.get("tests") or {}).values() if isinstance(f, str) and Path(f).is_file()]
        held = ev.get("heldout_file")
        held = held if isinstance(held, str) and Path(held).is_file() else None
        if tests or held:
            return tests, held
    return [], None


# --------------------------------------------------------------------------- on a server

class ServerSnapshot:
    def __init__(self, url: str, name: str, api_key: str | None):
        if not is_snapshot_name(name):
            raise SnapshotEvalError(f"--snapshot {name!r}: not a snapshot name ({NAME_RULE})")
        self.base, self.name, self.api_key = server_base_url(url), name, api_key
        self._path = "/v1/snapshots/" + urllib.parse.quote(name, safe="")

    def meta(self) -> dict:
        try:
            return request_json(self.base + self._path, api_key=self.api_key)
        except bh.EvalHTTPError as e:
            if " HTTP 404" in str(e):
                raise SnapshotEvalError(f"--snapshot {self.name}: the server has no such snapshot") from None
            raise

    def activate(self) -> dict:
        """Roll the live weights back to the snapshot (bit-identical; runs between training steps)."""
        return request_json(self.base + "/v1/rollback", {"to": self.name}, api_key=self.api_key, timeout=1800)

    def record(self, entry: dict) -> dict:
        return request_json(self.base + self._path + "/evals", entry, api_key=self.api_key)


# --------------------------------------------------------------------------- on disk

class LocalSnapshot:
    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        self.name = self.dir.name
        if not (self.dir / META_FILE).is_file() or not (self.dir / TV_FILE).is_file():
            raise SnapshotEvalError(f"--snapshot {folder}: not a snapshot folder (needs {TV_FILE} and {META_FILE})")

    def meta(self) -> dict:
        try:
            m = json.loads((self.dir / META_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SnapshotEvalError(f"--snapshot {self.dir}: unreadable {META_FILE} ({e})") from None
        if not isinstance(m, dict):
            raise SnapshotEvalError(f"--snapshot {self.dir}: {META_FILE} is not a JSON object")
        return m

    def apply_to(self, model) -> dict:
        """Add τ to ``model``'s weights in place, after checking every tensor belongs to this model."""
        import torch

        from plasticity.taskvec.files import SafetensorsFile, TaskVectorError
        from plasticity.taskvec.merge import add_delta_
        from plasticity.training.snapshots import fingerprint

        meta = self.meta()
        fp = fingerprint(model)
        if meta.get("model_fingerprint") != fp:
            raise SnapshotEvalError(f"--snapshot {self.dir}: made for another model (fingerprint "
                                    f"{meta.get('model_fingerprint')!r}, this model {fp!r})")
        try:
            f = SafetensorsFile(self.dir / TV_FILE)
        except TaskVectorError as e:
            raise SnapshotEvalError(f"--snapshot {self.dir}: {e}") from None
        params = dict(model.named_parameters())
        for n, info in f.tensors.items():  # check everything before changing anything
            if n not in params:
                raise SnapshotEvalError(f"--snapshot {self.dir}: tensor {n!r} is not in the model")
            if tuple(info.shape) != tuple(params[n].shape):
                raise SnapshotEvalError(f"--snapshot {self.dir}: {n} has shape {list(info.shape)}, "
                                        f"the model {list(params[n].shape)}")
        with torch.no_grad():
            for n in f.tensors:
                add_delta_(params[n].data, f.get(n))
        return {"tensors": len(f.tensors)}

    def record(self, entry: dict) -> dict:
        from plasticity.training.durable import fsync_dir, write_json

        m = self.meta()
        m["evals"] = list(m.get("evals") or []) + [entry]
        tmp = self.dir / (META_FILE + ".tmp")
        write_json(tmp, m)
        os.replace(tmp, self.dir / META_FILE)
        fsync_dir(self.dir)
        return m
