"""The on-disk layout of a snapshot, shared by the server that writes it and the tools that read it.

``<snapshot_dir>/<name>/task_vector.safetensors`` holds τ = W_live − W_base under the transformers
parameter names; ``<snapshot_dir>/<name>/meta.json`` what produced it (see
:mod:`plasticity.training.snapshots`). A name is a single path component by construction.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)  # always with fullmatch
TV_FILE, META_FILE = "task_vector.safetensors", "meta.json"
NAME_RULE = "letters, digits, '.', '_', '-' (≤ 64, starting with a letter or digit), not 'base'"


def is_snapshot_name(name: object) -> bool:
    """A name a snapshot may have: never a path, never ``base`` (the rollback target)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and name != "base"
