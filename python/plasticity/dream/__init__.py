"""The dream loop: the served model writes new training scenarios from the memory graph,
a judge keeps the good ones, a novelty filter drops near-duplicates, and the survivors are
trained (exactly once) through the server's training route. See ``docs/dream.md``.

Heavy parts (numpy, HTTP) load on use; ``plasticity.dream.config`` needs only the stdlib.
"""

from .config import DreamConfig, DreamConfigError, from_dict, load

__all__ = ["DreamConfig", "DreamConfigError", "from_dict", "load", "DreamLoop", "DreamRunner", "DreamError",
           "status_dict"]


def __getattr__(name):
    if name in ("DreamLoop", "DreamError"):
        from . import loop

        return getattr(loop, name)
    if name == "DreamRunner":
        from .runner import DreamRunner

        return DreamRunner
    if name == "status_dict":
        from .status import status_dict

        return status_dict
    raise AttributeError(name)
