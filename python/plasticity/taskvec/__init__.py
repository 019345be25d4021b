"""Task vectors (weight deltas): add, negate, scale, task arithmetic and
TIES-merging, per tensor in Rust, streaming over safetensors files.

See docs/task-vectors.md. The command line is ``plasticity tv merge|diff|delta``.
"""

from .files import SafetensorsFile, SafetensorsWriter, TaskVectorError, read_header, save_file
from .merge import (
    DEFAULT_TIES_DENSITY,
    add_delta_,
    delta_of,
    diff_files,
    merge_files,
    pair_stats,
    roundtrip_report,
    task_arithmetic,
    ties,
    write_delta_file,
)

__all__ = [
    "DEFAULT_TIES_DENSITY", "SafetensorsFile", "SafetensorsWriter", "TaskVectorError", "add_delta_", "delta_of",
    "diff_files", "merge_files", "pair_stats", "read_header", "roundtrip_report", "save_file", "task_arithmetic",
    "ties", "write_delta_file",
]
