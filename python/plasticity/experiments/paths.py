"""Where the experiments find their model and texts: ``--model`` / ``--heldout`` / ``--replay``,
else the locally built test models and their corpus (see :func:`models_root`)."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_SUBDIR = Path(".cache") / "plasticity" / "models"


def models_root() -> Path:
    """Where scripts/build_test_models.py puts the local models: ``PLASTICITY_TEST_MODELS_DIR``, else
    ``.cache/plasticity/models`` in the current directory or the nearest parent that has one (the
    installed wheel lives in site-packages, far from the checkout), else the user cache
    (``~/.cache/plasticity/models``, where scripts/setup.sh builds them)."""
    env = os.environ.get("PLASTICITY_TEST_MODELS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / MODELS_SUBDIR).is_dir():
            return d / MODELS_SUBDIR
    return user_cache() / "models"


def user_cache() -> Path:
    """Where scripts/setup.sh builds the models now, outside every checkout: ``$PLASTICITY_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/plasticity``, else ``~/.cache/plasticity``."""
    env = os.environ.get("PLASTICITY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "plasticity"


def resolve_model(arg: str | None, default_name: str) -> Path:
    """A model folder from ``--model``: a path, or a model's name (``smollm2-135m-instruct``) looked up
    in :func:`models_root`, where a model built from a recipe sits in ``NAME-<recipe hash>``."""
    name = arg or default_name
    d = Path(name).expanduser()
    if not (d / "config.json").is_file() and "/" not in name:
        d = find_named(models_root(), name) or models_root() / name
    if not (d / "config.json").is_file():
        hint = "" if arg and "/" in arg else " (build the local models with: bash scripts/setup.sh)"
        raise SystemExit(f"plasticity experiment: {d}: not a model folder (no config.json){hint}")
    return d.resolve()


def find_named(root: Path, name: str) -> Path | None:
    """``root/name``, else the newest ``root/name-<hash>`` whose manifest names it (a rebuilt recipe
    gets a new folder and the old one may still be there)."""
    if (root / name / "config.json").is_file():
        return root / name
    found = [d for d in root.glob(f"{name}-*") if (d / "config.json").is_file() and manifest(d).get("name") == name]
    return max(found, key=lambda d: (d / "config.json").stat().st_mtime) if found else None


def manifest(model_dir: Path) -> dict:
    """The build manifest beside a locally built model ({} for a model from elsewhere)."""
    import json

    try:
        return json.loads((Path(model_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def corpus_paths(model_dir: Path, heldout: str | None = None, replay: str | None = None) -> tuple[Path, Path]:
    """(held-out text, replay text): the options, else the local corpus beside the model, else the default one."""
    cands = [model_dir.parent / "corpus", models_root() / "corpus"]
    corpus = next((c for c in cands if (c / "heldout.jsonl").is_file() and (c / "train.txt").is_file()), None)
    h = Path(heldout) if heldout else (corpus / "heldout.jsonl" if corpus else None)
    r = Path(replay) if replay else (corpus / "train.txt" if corpus else None)
    for what, p in (("held-out", h), ("replay", r)):
        if p is None or not p.is_file():
            raise SystemExit(f"plasticity experiment: no {what} text found (looked in {[str(c) for c in cands]}); "
                             f"pass --{'heldout' if what == 'held-out' else 'replay'} FILE")
    return h.resolve(), r.resolve()
