"""How many times the live weights have changed, shared with the API process through a file.

vLLM's prefix cache reuses K/V by a hash of the prompt blocks and the request's ``cache_salt``.
After a training step, a merge or a rollback, K/V computed under the old weights must not be
served again, so the API server puts the current weights version into every generation request's
salt. The worker bumps the version after each change; the API server reads it per request with one
``pread`` of 16 bytes (no RPC). The file holds ``(epoch, count)``: a random epoch per worker start,
so a restarted server never reuses a salt of its previous life with other weights.
"""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

_FMT = "<QQ"


def version_path(journal: Path) -> Path:
    return Path(journal).with_name(Path(journal).name + ".weights-version")


class WeightsVersion:
    """The worker's side: ``bump()`` after every change of the live weights."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.epoch, self.count = secrets.randbits(63), 0
        self._write()

    def _write(self) -> None:
        os.pwrite(self.fd, struct.pack(_FMT, self.epoch, self.count), 0)

    def bump(self) -> int:
        self.count += 1
        self._write()
        return self.count


class VersionReader:
    """The API server's side: the current version as a short string (None while unknown)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def read(self) -> str | None:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return None
        raw = os.pread(self.fd, 16, 0)
        if len(raw) != 16:
            return None
        epoch, count = struct.unpack(_FMT, raw)
        return f"{epoch:x}.{count}"
