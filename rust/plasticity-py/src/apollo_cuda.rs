//! Python binding of the device Apollo step (plasticity-cuda's `DeviceApollo`):
//! one `CudaApollo` per CUDA matrix holds its device scratch and state; `step`
//! runs on plasticity's own CUDA stream, ordered against the caller's stream
//! (torch's current stream) with events, and never synchronises the host.
//!
//! The tensors are checked exactly as on the CPU (dtype, shapes, contiguity,
//! overlap), plus: all on this object's CUDA device, and a stream handle that
//! is an int of that device. The device is opened at the first step, after
//! those checks, so a machine without CUDA gets the checks' errors first and
//! then one that names what is missing.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use plasticity_core::apollo::Geometry;
use plasticity_core::DType;
use plasticity_cuda::apollo::{ApolloState, DeviceApollo};
use plasticity_cuda::{FloatType, Gpu};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::apollo::apollo_config;
use crate::cuda::{cuda_err, parse_stream};
use crate::tensor::{require_disjoint, Device, TensorView};

/// The optimizer's side stream on each device: one per process and device, shared by
/// every matrix (their steps queue in order on it).
fn apollo_gpu(ordinal: usize) -> PyResult<Gpu> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    let mut map = GPUS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Gpu::open(ordinal).map_err(cuda_err)?;
    map.insert(ordinal, g.clone());
    Ok(g)
}

fn parse_dtype(s: &str) -> PyResult<DType> {
    match s {
        "float32" | "torch.float32" => Ok(DType::F32),
        "bfloat16" | "torch.bfloat16" => Ok(DType::BF16),
        "float16" | "torch.float16" => Ok(DType::F16),
        other => Err(PyTypeError::new_err(format!(
            "dtype must be float32, bfloat16 or float16, got {other:?}"
        ))),
    }
}

fn float_type(d: DType) -> FloatType {
    match d {
        DType::F32 => FloatType::F32,
        DType::BF16 => FloatType::BF16,
        DType::F16 => FloatType::F16,
    }
}

/// One m×n matrix's Apollo state on CUDA device `device` (see the module docs).
#[pyclass(module = "plasticity._plasticity")]
pub struct CudaApollo {
    m: usize,
    n: usize,
    rank: usize,
    ordinal: usize,
    dtype: DType,
    seed: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    dev: Option<DeviceApollo>,
    /// A state to install when the device is opened (a loaded checkpoint).
    pending: Option<ApolloState>,
}

#[pymethods]
impl CudaApollo {
    #[new]
    #[pyo3(signature = (m, n, rank, dtype, device, seed))]
    fn new(
        m: usize,
        n: usize,
        rank: usize,
        dtype: &str,
        device: usize,
        seed: u64,
    ) -> PyResult<Self> {
        let dtype = parse_dtype(dtype)?;
        if m == 0 || n == 0 || rank == 0 || m.min(n) <= rank {
            return Err(PyValueError::new_err(format!(
                "a {m}×{n} matrix at rank {rank} is not stepped by Apollo (its smaller side must exceed the rank)"
            )));
        }
        Ok(Self {
            m,
            n,
            rank,
            ordinal: device,
            dtype,
            seed,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// One step, in place on `weight`, `exp_avg`, `exp_avg_sq` (all on this device), queued on
    /// plasticity's side stream after the work already queued on `stream` (an int, torch's
    /// `torch.cuda.current_stream().cuda_stream`), which then waits for it. Returns nothing:
    /// whether it was applied is known on the device only (see `state`).
    #[pyo3(signature = (
        weight, grad, exp_avg, exp_avg_sq, *, stream, lr, beta1, beta2, eps, weight_decay,
        correct_bias, rank, scale_type, alpha, update_proj_gap, norm_growth_limit,
        stochastic_rounding
    ))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        weight: &Bound<'_, PyAny>,
        grad: &Bound<'_, PyAny>,
        exp_avg: &Bound<'_, PyAny>,
        exp_avg_sq: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        correct_bias: bool,
        rank: usize,
        scale_type: &str,
        alpha: Option<f32>,
        update_proj_gap: u64,
        norm_growth_limit: Option<f32>,
        stochastic_rounding: bool,
    ) -> PyResult<()> {
        let cfg = apollo_config(
            (lr, beta1, beta2, eps, weight_decay, correct_bias),
            (
                rank,
                scale_type,
                alpha,
                update_proj_gap,
                norm_growth_limit,
                stochastic_rounding,
            ),
            "f32",
        )?;
        if rank != self.rank {
            return Err(PyValueError::new_err(format!(
                "rank {rank}, but this state was made for rank {}",
                self.rank
            )));
        }
        if stochastic_rounding {
            return Err(PyValueError::new_err(
                "stochastic_rounding is not available on CUDA yet",
            ));
        }
        let w = TensorView::new(weight, "weight")?;
        let g = TensorView::new(grad, "grad")?;
        let m1 = TensorView::new(exp_avg, "exp_avg")?;
        let m2 = TensorView::new(exp_avg_sq, "exp_avg_sq")?;
        let here = Device::Cuda(self.ordinal as i32);
        for v in [&w, &g, &m1, &m2] {
            if v.device != here {
                return Err(PyValueError::new_err(format!(
                    "{}: tensor is on {}, this Apollo state is on {here}",
                    v.name, v.device
                )));
            }
        }
        w.require_dtype(self.dtype)?;
        w.require_shape(&[self.m, self.n])?;
        g.require_dtype(self.dtype)?;
        g.require_shape(&[self.m, self.n])?;
        let (a, b) = Geometry::new(self.m, self.n, self.rank).moment_shape();
        for v in [&m1, &m2] {
            v.require_dtype(DType::F32)?;
            v.require_shape(&[a, b])?;
        }
        require_disjoint(&[&w, &g, &m1, &m2])?;
        let stream = parse_stream(stream)?;
        let (pw, pg, p1, p2) = (w.ptr as u64, g.ptr as u64, m1.ptr as u64, m2.ptr as u64);
        let gpu = apollo_gpu(self.ordinal)?;
        py.detach(|| {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.dev.is_none() {
                let mut dev = DeviceApollo::new(
                    &gpu,
                    self.m,
                    self.n,
                    self.rank,
                    float_type(self.dtype),
                    self.seed,
                )?;
                if let Some(st) = inner.pending.take() {
                    dev.set_state(st)?;
                }
                inner.dev = Some(dev);
            }
            let dev = inner.dev.as_mut().expect("opened above");
            // SAFETY: the four views were checked (dtype, shape, contiguity, one device, no
            // overlap); torch keeps their memory alive in the order of `stream`, which waits
            // for this step before anything after it.
            unsafe { dev.step_ordered(&cfg, stream, pw, pg, p1, p2) }
        })
        .map_err(cuda_err)
    }

    /// The device state, read back (waits for the queued steps): `step`, `prev_norm` (None
    /// before the first applied step), `skipped` (steps skipped so far), `limiter`, `step_size`.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = py
            .detach(|| {
                let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                match (&inner.dev, inner.pending) {
                    (Some(dev), _) => dev.state(),
                    (None, Some(st)) => Ok(st),
                    (None, None) => Ok(ApolloState::default()),
                }
            })
            .map_err(cuda_err)?;
        let d = PyDict::new(py);
        d.set_item("step", st.step)?;
        d.set_item("prev_norm", (st.has_prev != 0).then_some(st.prev_norm))?;
        d.set_item("skipped", st.skipped_total)?;
        d.set_item("limiter", st.limiter)?;
        d.set_item("step_size", st.step_size)?;
        Ok(d)
    }

    /// Install a state (a loaded checkpoint), in stream order; before the first step it is
    /// kept and installed when the device is opened.
    #[pyo3(signature = (step, prev_norm, skipped = 0))]
    fn set_state(
        &self,
        py: Python<'_>,
        step: u64,
        prev_norm: Option<f32>,
        skipped: u64,
    ) -> PyResult<()> {
        if let Some(p) = prev_norm {
            if !(p.is_finite() && p >= 0.0) {
                return Err(PyValueError::new_err(format!(
                    "prev_norm must be finite and ≥ 0, got {p}"
                )));
            }
        }
        let st = ApolloState {
            step,
            prev_norm: prev_norm.unwrap_or(0.0),
            has_prev: prev_norm.is_some() as i32,
            skipped_total: skipped,
            limiter: 1.0,
            ..Default::default()
        };
        py.detach(|| {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match inner.dev.as_mut() {
                Some(dev) => dev.set_state(st),
                None => {
                    inner.pending = Some(st);
                    Ok(())
                }
            }
        })
        .map_err(cuda_err)
    }

    #[getter]
    fn device(&self) -> usize {
        self.ordinal
    }
}
