"""Steering vectors: files, per-request flags, extraction, the torch op.

Layer numbering everywhere is repeng's / llama.cpp's: ``direction.N`` is added
to the output of decoder block ``N`` (0-based), i.e. to the residual stream
that block ``N+1`` reads.
"""

from .files import load_vector_file, save_gguf, save_safetensors, read_gguf
from .spec import SteerSpec, SteeringError, parse_xargs

__all__ = ["SteerSpec", "SteeringError", "parse_xargs", "load_vector_file", "save_gguf", "save_safetensors", "read_gguf"]
