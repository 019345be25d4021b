//! Python bindings of `plasticity_core::safetensors_file`: header validation,
//! the reader and the atomic writer. The GIL is released around all file I/O.
//!
//! Errors: an operating-system failure while reading or writing tensor data
//! (disk full, EIO, a refused rename) is raised as `OSError` with its errno (so
//! Python picks the subclass), everything else as `ValueError` with the core's
//! message; `plasticity.taskvec.files` turns those into `TaskVectorError`.
//! Tensor bytes cross as Python buffers (a `memoryview` of the tensor's bytes),
//! zero-copy: read from for a write, written into for a read.

// The core's errors are large (they carry what their messages name) and returned once per
// call: see plasticity_core::safetensors_file.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use plasticity_core::safetensors_file::{
    self as st, dtype_from_name, FileError, Header, SafetensorsReader, Strerror, TensorSpec,
};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

fn to_py(e: FileError) -> PyErr {
    match &e {
        FileError::Io { path, source } => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((
                code,
                Strerror(source).to_string(),
                path.display().to_string(),
            )),
            None => PyOSError::new_err(e.to_string()),
        },
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// `(metadata pairs, [(name, dtype, shape, start, end), ...])` in data-offset order.
type PyHeader = (
    Vec<(String, String)>,
    Vec<(String, String, Vec<u64>, u64, u64)>,
);

fn header_to_py(h: &Header) -> PyHeader {
    let tensors = h
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.to_string(),
                t.shape.clone(),
                t.start,
                t.end,
            )
        })
        .collect();
    (h.metadata.clone(), tensors)
}

/// Validate the header of the safetensors file at `path`.
#[pyfunction]
pub fn st_read_header(py: Python<'_>, path: PathBuf) -> PyResult<PyHeader> {
    let h = py.detach(|| st::read_header(&path)).map_err(to_py)?;
    Ok(header_to_py(&h))
}

/// `[(name, bits per element), ...]`: the dtypes the validation knows.
#[pyfunction]
pub fn st_dtypes() -> Vec<(String, usize)> {
    st::DTYPES
        .iter()
        .map(|d| (d.to_string(), d.bitsize()))
        .collect()
}

/// An open, validated safetensors file (`plasticity_core`'s reader).
#[pyclass(frozen, module = "plasticity._plasticity")]
pub struct SafetensorsFileReader {
    path: PathBuf,
    /// `None` once closed; reads in flight keep their `Arc` (and the fd) until they end.
    inner: Mutex<Option<Arc<SafetensorsReader>>>,
}

impl SafetensorsFileReader {
    fn get(&self) -> PyResult<Arc<SafetensorsReader>> {
        self.inner
            .lock()
            .map_err(|_| PyValueError::new_err("reader lock poisoned"))?
            .clone()
            .ok_or_else(|| {
                PyValueError::new_err(format!("{}: file is closed", self.path.display()))
            })
    }
}

#[pymethods]
impl SafetensorsFileReader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let r = py
            .detach(|| SafetensorsReader::open(&path))
            .map_err(to_py)?;
        Ok(Self {
            path,
            inner: Mutex::new(Some(Arc::new(r))),
        })
    }

    /// `(metadata pairs, [(name, dtype, shape, start, end), ...])` in data-offset order.
    fn header(&self) -> PyResult<PyHeader> {
        Ok(header_to_py(self.get()?.header()))
    }

    /// Read tensor `name`'s bytes into `out`: a writable, C-contiguous byte
    /// buffer of exactly its size (e.g. `memoryview(torch.empty(n, dtype=torch.uint8).numpy())`).
    fn read_into(&self, py: Python<'_>, name: &str, out: PyBuffer<u8>) -> PyResult<()> {
        let r = self.get()?;
        if out.readonly() {
            return Err(PyValueError::new_err("read_into: the buffer is read-only"));
        }
        let Some(ptr) = out.as_slice_ptr() else {
            return Err(PyValueError::new_err(
                "read_into: the buffer is not C-contiguous",
            ));
        };
        // SAFETY: `out` holds the exporter's buffer (and the exporter) alive until it is
        // dropped after this call; it is writable and contiguous, checked above. Python code
        // could write to the same memory concurrently, as with any buffer handed to C.
        let dst: &mut [u8] = unsafe { &mut *ptr.as_ptr() };
        py.detach(move || r.read_into(name, dst)).map_err(to_py)
    }

    /// Close the file (reads in flight finish first). Idempotent.
    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }
}

/// A safetensors file being written (`plasticity_core`'s atomic writer).
#[pyclass(module = "plasticity._plasticity")]
pub struct SafetensorsFileWriter {
    inner: st::SafetensorsWriter,
}

#[pymethods]
impl SafetensorsFileWriter {
    /// `specs`: `[(name, dtype name such as "F32", shape), ...]` in writing order.
    #[new]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        specs: Vec<(String, String, Vec<u64>)>,
        metadata: Vec<(String, String)>,
    ) -> PyResult<Self> {
        let mut checked = Vec::with_capacity(specs.len());
        for (name, dtype, shape) in specs {
            let Some(dtype) = dtype_from_name(&dtype) else {
                let problem = st::UsageError::CannotWriteDtype { name, dtype };
                return Err(PyValueError::new_err(problem.to_string()));
            };
            checked.push(TensorSpec { name, dtype, shape });
        }
        let inner = py
            .detach(|| st::SafetensorsWriter::create(&path, checked, &metadata))
            .map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Append the next tensor. `dtype` is its safetensors name (`None` when it
    /// has none: a mismatch), `data` its bytes (a C-contiguous buffer), `got`
    /// how the caller names what it passed, for the mismatch message.
    fn write(
        &mut self,
        py: Python<'_>,
        name: &str,
        dtype: Option<&str>,
        shape: Vec<u64>,
        data: Option<PyBuffer<u8>>,
        got: &str,
    ) -> PyResult<()> {
        let dtype = dtype.and_then(dtype_from_name);
        let bytes: &[u8] = match &data {
            None => &[],
            Some(b) => {
                let Some(ptr) = b.as_slice_ptr() else {
                    return Err(PyValueError::new_err(
                        "write: the buffer is not C-contiguous",
                    ));
                };
                // SAFETY: `data` keeps the exporter's buffer alive for this call; it is only read.
                unsafe { &*ptr.as_ptr() }
            }
        };
        let w = &mut self.inner;
        py.detach(move || w.write_described(name, dtype, &shape, bytes, got))
            .map_err(to_py)
    }

    /// fsync, rename over the target, fsync the directory (see the core's docs).
    fn commit(&mut self, py: Python<'_>) -> PyResult<()> {
        let w = &mut self.inner;
        py.detach(move || w.commit()).map_err(to_py)
    }

    /// Remove the temporary file; the target is left as it was.
    fn abort(&mut self, py: Python<'_>) {
        let w = &mut self.inner;
        py.detach(move || w.abort())
    }
}
