//! The CUDA side as Python sees it: whether the kernels can run here, loading
//! NVRTC from where torch's wheels put it, and errors that say what is missing.
//!
//! libcuda and NVRTC are dlopen'ed on first use (plasticity-cuda is built on
//! cudarc with dynamic loading), so the same wheel imports on a machine
//! without CUDA; there every CUDA entry point raises instead.

use std::path::Path;

use plasticity_cuda::{CudaError, Gpu};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A `CudaError` as a Python exception: a bad argument is a ValueError; a
/// machine that cannot run the kernels (no driver, no NVRTC, no device) a
/// RuntimeError that names what is missing.
pub(crate) fn cuda_err(e: CudaError) -> PyErr {
    match e {
        CudaError::InvalidArgument(m) => PyValueError::new_err(m),
        CudaError::DriverMissing
        | CudaError::NvrtcMissing
        | CudaError::NoDevice
        | CudaError::BadOrdinal { .. } => PyRuntimeError::new_err(format!(
            "plasticity's CUDA kernels cannot run on this machine: {e}"
        )),
        other => PyRuntimeError::new_err(format!("plasticity CUDA: {other}")),
    }
}

/// A CUDA stream handle from Python: a non-negative int that fits a pointer
/// (torch's `torch.cuda.current_stream().cuda_stream`; 0 is the legacy default stream).
pub(crate) fn parse_stream(stream: &Bound<'_, PyAny>) -> PyResult<usize> {
    use pyo3::types::{PyBool, PyInt};
    if stream.is_instance_of::<PyBool>() || !stream.is_instance_of::<PyInt>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "stream: expected an int (torch.cuda.current_stream().cuda_stream), got {}",
            stream.get_type().name()?
        )));
    }
    stream.extract::<usize>().map_err(|_| {
        PyValueError::new_err(format!(
            "stream: {stream} is not a CUDA stream handle (a non-negative pointer-sized int)"
        ))
    })
}

/// The process-wide handle of device `ordinal` (opened once; no stream of its own).
pub(crate) fn gpu(ordinal: usize) -> PyResult<Gpu> {
    Gpu::shared(ordinal).map_err(cuda_err)
}

/// True when the CUDA kernels can run: libcuda and NVRTC load and a device is visible.
#[pyfunction]
pub fn cuda_available() -> bool {
    plasticity_cuda::available()
}

/// What this process can see of CUDA: `driver` (libcuda loads), `nvrtc` (NVRTC
/// loads), `devices` (count, or None), `nvrtc_version` ("13.0" or None) and
/// `error` (why the kernels cannot run, or None).
#[pyfunction]
pub fn cuda_status(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let driver = plasticity_cuda::driver_present();
    let nvrtc = plasticity_cuda::nvrtc_present();
    let count = plasticity_cuda::device_count();
    d.set_item("driver", driver)?;
    d.set_item("nvrtc", nvrtc)?;
    d.set_item("devices", count.as_ref().ok().copied())?;
    d.set_item(
        "nvrtc_version",
        plasticity_cuda::nvrtc_version()
            .ok()
            .map(|(a, b)| format!("{a}.{b}")),
    )?;
    let error = match (&count, nvrtc) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(0), _) => Some(CudaError::NoDevice.to_string()),
        (Ok(_), false) => Some(CudaError::NvrtcMissing.to_string()),
        _ => None,
    };
    d.set_item("error", error)?;
    Ok(d)
}

/// Load NVRTC from `path` (e.g. torch's `nvidia/cu13/lib/libnvrtc.so.13`) and
/// keep it loaded; call before the first kernel compile. Returns whether
/// NVRTC is usable afterwards.
#[pyfunction]
pub fn cuda_preload_nvrtc(path: &str) -> PyResult<bool> {
    let p = Path::new(path);
    if !p.is_file() {
        return Err(PyValueError::new_err(format!("{path}: no such file")));
    }
    plasticity_cuda::preload_nvrtc(p).map_err(cuda_err)?;
    Ok(plasticity_cuda::nvrtc_present())
}

/// Compile (NVRTC) and load every kernel on device `ordinal` now, so that no
/// module is loaded later inside a CUDA-graph capture. Returns the kernel names.
#[pyfunction]
pub fn cuda_load_kernels(py: Python<'_>, ordinal: usize) -> PyResult<Vec<&'static str>> {
    py.detach(|| {
        let gpu = Gpu::shared(ordinal)?;
        let names: Vec<&'static str> = plasticity_cuda::kernel_names().collect();
        for name in &names {
            gpu.kernel(name)?;
        }
        Ok(names)
    })
    .map_err(cuda_err)
}
