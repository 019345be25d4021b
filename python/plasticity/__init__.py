"""plasticity: steering vectors and online Apollo training inside a live vLLM server.

The math runs in Rust (``plasticity._plasticity``), zero-copy on torch tensors.
"""

from ._plasticity import __version__
from .optim import Apollo

__all__ = ["Apollo", "__version__"]
