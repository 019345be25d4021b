//! `TrainQueue`: the serving → training channel (a bounded crossbeam channel).
//!
//! The API side pushes accepted examples (any Python object; the worker uses
//! dicts of token ids) with `push` (non-blocking: a full queue is reported,
//! never waited on inside vLLM's RPC loop); the training thread takes them with
//! `pop(timeout)`, which waits with the GIL released so serving threads run.

use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[pyclass(module = "plasticity._plasticity")]
pub struct TrainQueue {
    tx: Sender<Py<PyAny>>,
    rx: Receiver<Py<PyAny>>,
    capacity: usize,
}

#[pymethods]
impl TrainQueue {
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        if capacity == 0 {
            return Err(PyValueError::new_err("TrainQueue capacity must be ≥ 1"));
        }
        let (tx, rx) = bounded(capacity);
        Ok(Self { tx, rx, capacity })
    }

    /// Enqueue without blocking; False when the queue is full.
    fn push(&self, item: Py<PyAny>) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Next item, waiting up to `timeout` seconds with the GIL released; None on timeout.
    #[pyo3(signature = (timeout=None))]
    fn pop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let rx = self.rx.clone();
        let t = match timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(PyValueError::new_err("timeout must be finite and ≥ 0"))
            }
            Some(t) => Duration::from_secs_f64(t),
            None => Duration::from_secs(u64::MAX / 4),
        };
        let got = py.detach(move || rx.recv_timeout(t));
        match got {
            Ok(item) => Ok(Some(item)),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => Ok(None),
        }
    }

    /// Take everything queued now, without waiting.
    fn drain(&self) -> Vec<Py<PyAny>> {
        self.rx.try_iter().collect()
    }

    fn __len__(&self) -> usize {
        self.rx.len()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }
}
