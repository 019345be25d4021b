"""plasticity.cuda: what the process can see of CUDA, NVRTC discovery, and the once-per-device
decision between the kernels and plain torch. Runs anywhere; the GPU side is in
tests/steering/test_steering_op.py and scripts/gpu_check.sh."""

import logging

import pytest

from plasticity import _plasticity as rs
from plasticity import cuda
from cuda_support import NO_DRIVER, needs_no_driver


def test_status_reports_each_part():
    st = cuda.status()
    assert set(st) == {"driver", "nvrtc", "devices", "nvrtc_version", "error"}
    assert st["driver"] is (not NO_DRIVER)
    if NO_DRIVER:
        assert st["devices"] is None and "libcuda" in st["error"]
        assert rs.cuda_available() is False
    if st["nvrtc"]:
        major, minor = st["nvrtc_version"].split(".")
        assert int(major) >= 12 and int(minor) >= 0


def test_nvrtc_candidates_put_the_environment_first(monkeypatch, tmp_path):
    lib = tmp_path / "libnvrtc.so.13"
    lib.write_bytes(b"")
    monkeypatch.setenv(cuda.NVRTC_ENV, str(lib))
    assert cuda.nvrtc_candidates()[0] == lib


def test_a_bad_nvrtc_path_is_a_warning_not_a_crash(monkeypatch, tmp_path, caplog):
    bogus = tmp_path / "libnvrtc.so.13"
    bogus.write_bytes(b"not a library")
    monkeypatch.setenv(cuda.NVRTC_ENV, str(bogus))
    monkeypatch.setattr(cuda, "_nvrtc_tried", False)
    with caplog.at_level(logging.WARNING, logger="vllm.plasticity.cuda"):
        cuda.ensure_nvrtc()
    assert any("cannot load NVRTC from" in r.getMessage() and str(bogus) in r.getMessage() for r in caplog.records)


def test_preload_of_a_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        rs.cuda_preload_nvrtc(str(tmp_path / "nope.so"))


@needs_no_driver
def test_kernels_ready_says_why_not_once_and_remembers(monkeypatch, caplog):
    monkeypatch.setattr(cuda, "_ready", {})
    with caplog.at_level(logging.WARNING, logger="vllm.plasticity.cuda"):
        why = cuda.kernels_ready(0)
    assert "libcuda" in why
    assert sum("plain torch instead" in r.getMessage() for r in caplog.records) == 1

    def no_more_driver_calls():
        raise AssertionError("kernels_ready asked the driver again")

    monkeypatch.setattr(rs, "cuda_status", no_more_driver_calls)
    assert cuda.kernels_ready(0) == why


@needs_no_driver
def test_loading_kernels_without_a_driver_names_the_driver():
    with pytest.raises(RuntimeError, match="cannot run on this machine: CUDA driver library"):
        rs.cuda_load_kernels(0)
