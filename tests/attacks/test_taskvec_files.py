"""Hostile or malformed safetensors files given to ``plasticity tv merge|diff``.

Each must raise TaskVectorError with a clear message (or exit 2 from the CLI)
and leave no output file (and no temporary file) behind.
"""

import json
import struct

import pytest
import torch

from plasticity.taskvec import TaskVectorError, diff_files, merge_files, save_file
from plasticity.taskvec.cli import main as tv_main


def _st(header: dict, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.fixture
def good(tmp_path):
    """base + one fine-tuned model (f32), small."""
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(8, 4, generator=g), "b.weight": torch.randn(6, generator=g)}
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    save_file(tmp_path / "base.safetensors", base, {"format": "pt"})
    save_file(tmp_path / "ft.safetensors", ft, {"format": "pt"})
    return tmp_path


def _refused(tmp_path, bad_bytes, match, *, as_base=False):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bad_bytes)
    out = tmp_path / "out.safetensors"
    base = bad if as_base else tmp_path / "base.safetensors"
    inp = tmp_path / "ft.safetensors" if as_base else bad
    with pytest.raises(TaskVectorError, match=match):
        merge_files("ties", base, [inp], out, density=0.5)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    return bad


def test_truncated_file(good):
    data = (good / "ft.safetensors").read_bytes()
    _refused(good, data[:-10], "out of range|truncated")


def test_truncated_inside_header(good):
    data = (good / "ft.safetensors").read_bytes()
    _refused(good, data[:40], "truncated")


def test_shorter_than_length_prefix(good):
    _refused(good, b"\x01\x02\x03", "truncated")


def test_empty_file(good):
    _refused(good, b"", "truncated")


def test_absurd_header_length(good):
    _refused(good, struct.pack("<Q", 1 << 62) + b"{}", "absurd")


def test_header_length_past_end_of_file(good):
    _refused(good, struct.pack("<Q", 5000) + b'{"a": 1}', "truncated")


def test_header_not_json(good):
    _refused(good, _st({}, raw_header=b"{not json"), "not valid JSON")


def test_header_not_an_object(good):
    _refused(good, _st({}, raw_header=b"[1, 2]"), "JSON object")


def test_deeply_nested_header(good):
    _refused(good, _st({}, raw_header=b"[" * 100_000 + b"]" * 100_000), "not valid JSON|JSON object")


def test_non_utf8_header(good):
    _refused(good, _st({}, raw_header=b'{"__metadata__": {"k": "\xff\xfe"}}'), "not UTF-8")


def test_metadata_not_strings(good):
    _refused(good, _st({"__metadata__": {"k": 1}}), "__metadata__ must map strings to strings")


def test_duplicate_tensor_names(good):
    e = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    _refused(good, _st({}, raw_header=f'{{"x": {e}, "x": {e}}}'.encode(), data=b"\0" * 4), "duplicate key 'x'")


def test_duplicate_key_inside_an_entry(good):
    h = b'{"x": {"dtype": "F32", "dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}'
    _refused(good, _st({}, raw_header=h, data=b"\0" * 4), "duplicate key 'dtype'")


def test_unknown_dtype(good):
    _refused(good, _st({"a.weight": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
             "unknown dtype 'F7'")


def test_offsets_out_of_range(good):
    _refused(good, _st({"a.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}}, b"\0" * 16),
             "out of range")


def test_overlapping_offsets(good):
    hdr = {"a.weight": {"dtype": "F32", "shape": [8, 4], "data_offsets": [0, 128]},
           "b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [100, 124]}}
    _refused(good, _st(hdr, b"\0" * 128), "overlapping")


def test_gap_between_tensors(good):
    hdr = {"a.weight": {"dtype": "F32", "shape": [8, 4], "data_offsets": [0, 128]},
           "b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [136, 160]}}
    _refused(good, _st(hdr, b"\0" * 160), "belong to no tensor")


def test_trailing_bytes(good):
    hdr = {"b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}
    _refused(good, _st(hdr, b"\0" * 40), "trailing bytes")


def test_byte_count_disagrees_with_shape(good):
    _refused(good, _st({"b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [0, 20]}}, b"\0" * 20),
             "needs 24")


def test_negative_shape(good):
    _refused(good, _st({"b.weight": {"dtype": "F32", "shape": [-6], "data_offsets": [0, 0]}}), "non-negative")


def test_reversed_offsets(good):
    _refused(good, _st({"b.weight": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8),
             "bad data_offsets")


def test_extra_field_in_entry(good):
    _refused(good, _st({"b.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4),
             "exactly dtype, shape and data_offsets")


def test_hostile_base_file(good):
    _refused(good, struct.pack("<Q", 1 << 62), "absurd", as_base=True)


def test_not_a_file(good):
    out = good / "out.safetensors"
    with pytest.raises(TaskVectorError, match="no such file"):
        merge_files("ties", good / "base.safetensors", [good / "missing.safetensors"], out)
    assert not out.exists()


def test_hostile_file_in_diff(good):
    bad = good / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 62))
    with pytest.raises(TaskVectorError, match="absurd"):
        diff_files(good / "ft.safetensors", bad)


def test_cli_reports_hostile_file_and_exits_2(good, capsys):
    bad = good / "bad.safetensors"
    bad.write_bytes((good / "ft.safetensors").read_bytes()[:-3])
    out = good / "out.safetensors"
    rc = tv_main(["tv", "merge", "--method", "ties", "--base", str(good / "base.safetensors"), str(bad), "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "plasticity tv merge: error:" in err and "bad.safetensors" in err
    assert not out.exists()
