//! Python bindings of the Apollo and AdamW steps: in place on torch tensors.

use plasticity_core::apollo::{self, Geometry};
use plasticity_core::{
    AdamConfig, ApolloConfig, DType, Element, MatrixState, ProjectionPrecision, ScaleType,
    StepOutcome,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::tensor::{require_disjoint, SendPtr, TensorView};

pub(crate) fn core_err(e: plasticity_core::CoreError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Scratch memory and a private thread pool for optimizer steps.
///
/// One per optimizer: steps run on its own rayon pool so a training thread
/// never competes with another pool for the same cores by accident.
#[pyclass(module = "plasticity._plasticity")]
pub struct Workspace {
    pub(crate) inner: std::sync::Mutex<apollo::Workspace>,
    pub(crate) pool: rayon::ThreadPool,
}

#[pymethods]
impl Workspace {
    #[new]
    #[pyo3(signature = (threads = 0, cache_projection = false))]
    fn new(threads: usize, cache_projection: bool) -> PyResult<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("plasticity-opt-{i}"))
            .build()
            .map_err(|e| {
                PyValueError::new_err(format!("cannot start {threads} optimizer threads: {e}"))
            })?;
        let mut ws = apollo::Workspace::new(threads);
        ws.set_projection_cache(cache_projection);
        Ok(Self {
            inner: std::sync::Mutex::new(ws),
            pool,
        })
    }

    #[getter]
    fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Bytes of scratch held (G in f32 for 16-bit weights, R, P, channel sums).
    #[getter]
    fn scratch_bytes(&self) -> usize {
        self.inner.lock().unwrap().scratch_bytes()
    }

    /// Bytes held by the opt-in projection cache.
    #[getter]
    fn cache_bytes(&self) -> usize {
        self.inner.lock().unwrap().cache_bytes()
    }
}

pub(crate) fn parse_scale_type(s: &str) -> PyResult<ScaleType> {
    match s {
        "channel" => Ok(ScaleType::Channel),
        "tensor" => Ok(ScaleType::Tensor),
        other => Err(PyValueError::new_err(format!(
            "scale_type must be 'channel' or 'tensor', got {other:?}"
        ))),
    }
}

pub(crate) fn parse_precision(s: &str) -> PyResult<ProjectionPrecision> {
    match s {
        "auto" => Ok(ProjectionPrecision::Auto),
        "f32" | "float32" => Ok(ProjectionPrecision::F32),
        "bf16" | "bfloat16" => Ok(ProjectionPrecision::Bf16),
        other => Err(PyValueError::new_err(format!(
            "projection_precision must be 'auto', 'f32' or 'bf16', got {other:?}"
        ))),
    }
}

/// The keyword arguments every Apollo entry point takes, checked: (lr, β1, β2, ε, weight decay,
/// bias correction), (rank, scale type, α, refresh gap, limiter γ, stochastic rounding), precision.
#[allow(clippy::type_complexity)]
pub(crate) fn apollo_config(
    (lr, beta1, beta2, eps, weight_decay, correct_bias): (f32, f32, f32, f32, f32, bool),
    (rank, scale_type, alpha, update_proj_gap, norm_growth_limit, stochastic_rounding): (
        usize,
        &str,
        Option<f32>,
        u64,
        Option<f32>,
        bool,
    ),
    projection_precision: &str,
) -> PyResult<ApolloConfig> {
    let cfg = ApolloConfig {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        correct_bias,
        rank,
        scale_type: parse_scale_type(scale_type)?,
        alpha,
        update_proj_gap,
        norm_growth_limit,
        stochastic_rounding,
        projection_precision: parse_precision(projection_precision)?,
    };
    cfg.validate().map_err(core_err)?;
    Ok(cfg)
}

pub(crate) fn outcome_tuple(out: StepOutcome) -> (bool, f32, bool) {
    match out {
        StepOutcome::Applied {
            limiter, refreshed, ..
        } => (true, limiter, refreshed),
        StepOutcome::SkippedNonFinite => (false, 1.0, false),
    }
}

/// One Apollo step, in place on `weight`, `exp_avg`, `exp_avg_sq`.
///
/// Returns `(applied, step, prev_norm, limiter, refreshed)`; `applied` is False
/// when the gradient was not finite, and then nothing was written.
#[pyfunction]
#[pyo3(signature = (
    weight, grad, exp_avg, exp_avg_sq, *, step, seed, prev_norm, lr, beta1, beta2, eps,
    weight_decay, correct_bias, rank, scale_type, alpha, update_proj_gap, norm_growth_limit,
    stochastic_rounding, workspace, projection = None, projection_precision = "auto"
))]
#[allow(clippy::too_many_arguments)]
pub fn apollo_step(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    exp_avg: &Bound<'_, PyAny>,
    exp_avg_sq: &Bound<'_, PyAny>,
    step: u64,
    seed: u64,
    prev_norm: Option<f32>,
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
    workspace: &Workspace,
    projection: Option<&Bound<'_, PyAny>>,
    projection_precision: &str,
) -> PyResult<(bool, u64, Option<f32>, f32, bool)> {
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
        projection_precision,
    )?;
    let w = TensorView::new(weight, "weight")?;
    let g = TensorView::new(grad, "grad")?;
    let m1 = TensorView::new(exp_avg, "exp_avg")?;
    let m2 = TensorView::new(exp_avg_sq, "exp_avg_sq")?;
    w.require_cpu()?;
    w.require_nonempty()?;
    if w.shape.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "weight: Apollo needs a 2-D matrix, got shape {:?}",
            w.shape
        )));
    }
    let (m, n) = (w.shape[0], w.shape[1]);
    for v in [&g, &m1, &m2] {
        v.require_cpu()?;
    }
    g.require_dtype(w.dtype)?;
    g.require_shape(&w.shape)?;
    let geo = Geometry::new(m, n, rank);
    let (a, b) = geo.moment_shape();
    for v in [&m1, &m2] {
        v.require_dtype(DType::F32)?;
        v.require_shape(&[a, b])?;
    }
    let p = match projection {
        Some(p) => {
            let p = TensorView::new(p, "projection")?;
            p.require_cpu()?;
            p.require_dtype(DType::F32)?;
            p.require_shape(&[rank, geo.compressed()])?;
            Some(p)
        }
        None => None,
    };
    let mut views = vec![&w, &g, &m1, &m2];
    if let Some(p) = &p {
        views.push(p);
    }
    require_disjoint(&views)?;

    let mut state = MatrixState {
        step,
        seed,
        prev_norm,
    };
    let ptrs = (
        SendPtr(w.ptr),
        SendPtr(g.ptr),
        SendPtr(m1.ptr),
        SendPtr(m2.ptr),
        p.as_ref().map(|p| SendPtr(p.ptr)),
    );
    let dtype = w.dtype;
    let (numel, mlen, plen) = (m * n, geo.moment_len(), geo.projection_len());
    let result = py.detach(|| {
        let ptrs = ptrs;
        let mut guard = workspace.inner.lock().unwrap();
        let ws: &mut apollo::Workspace = &mut guard;
        let (cfg, state) = (&cfg, &mut state);
        workspace.pool.install(move || {
            // SAFETY: shapes, dtypes, devices and disjointness were checked above and
            // the views (and so the tensors) outlive this call.
            unsafe {
                let m1 = std::slice::from_raw_parts_mut(ptrs.2.get() as *mut f32, mlen);
                let m2 = std::slice::from_raw_parts_mut(ptrs.3.get() as *mut f32, mlen);
                let p = ptrs
                    .4
                    .as_ref()
                    .map(|p| std::slice::from_raw_parts(p.get() as *const f32, plen));
                fn go<T: Element>(
                    cfg: &ApolloConfig,
                    m: usize,
                    n: usize,
                    w: *mut u8,
                    g: *mut u8,
                    numel: usize,
                    m1: &mut [f32],
                    m2: &mut [f32],
                    st: &mut MatrixState,
                    p: Option<&[f32]>,
                    ws: &mut apollo::Workspace,
                ) -> plasticity_core::Result<StepOutcome> {
                    let w = unsafe { std::slice::from_raw_parts_mut(w as *mut T, numel) };
                    let g = unsafe { std::slice::from_raw_parts(g as *const T, numel) };
                    apollo::apollo_step(cfg, m, n, w, g, m1, m2, st, p, ws)
                }
                by_dtype!(dtype, go(cfg, m, n, ptrs.0.get(), ptrs.1.get(), numel, m1, m2, state, p, ws))
            }
        })
    });
    let out = result.map_err(core_err)?;
    let (applied, limiter, refreshed) = outcome_tuple(out);
    Ok((applied, state.step, state.prev_norm, limiter, refreshed))
}

/// One plain AdamW step (HF convention), in place. Returns `(applied, step)`.
#[pyfunction]
#[pyo3(signature = (
    weight, grad, exp_avg, exp_avg_sq, *, step, seed, lr, beta1, beta2, eps, weight_decay,
    correct_bias, stochastic_rounding, workspace
))]
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    exp_avg: &Bound<'_, PyAny>,
    exp_avg_sq: &Bound<'_, PyAny>,
    step: u64,
    seed: u64,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    correct_bias: bool,
    stochastic_rounding: bool,
    workspace: &Workspace,
) -> PyResult<(bool, u64)> {
    let cfg = AdamConfig {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        correct_bias,
        stochastic_rounding,
    };
    cfg.validate().map_err(core_err)?;
    let w = TensorView::new(weight, "weight")?;
    let g = TensorView::new(grad, "grad")?;
    let m1 = TensorView::new(exp_avg, "exp_avg")?;
    let m2 = TensorView::new(exp_avg_sq, "exp_avg_sq")?;
    for v in [&w, &g, &m1, &m2] {
        v.require_cpu()?;
    }
    w.require_nonempty()?;
    g.require_dtype(w.dtype)?;
    g.require_shape(&w.shape)?;
    for v in [&m1, &m2] {
        v.require_dtype(DType::F32)?;
        v.require_shape(&w.shape)?;
    }
    require_disjoint(&[&w, &g, &m1, &m2])?;
    let numel = w.numel();
    let mut st = step;
    let ptrs = (
        SendPtr(w.ptr),
        SendPtr(g.ptr),
        SendPtr(m1.ptr),
        SendPtr(m2.ptr),
    );
    let dtype = w.dtype;
    let threads = workspace.pool.current_num_threads();
    let result = py.detach(|| {
        let ptrs = ptrs;
        let (cfg, st) = (&cfg, &mut st);
        workspace.pool.install(move || unsafe {
            let m1 = std::slice::from_raw_parts_mut(ptrs.2.get() as *mut f32, numel);
            let m2 = std::slice::from_raw_parts_mut(ptrs.3.get() as *mut f32, numel);
            fn go<T: Element>(
                cfg: &AdamConfig,
                w: *mut u8,
                g: *mut u8,
                numel: usize,
                m1: &mut [f32],
                m2: &mut [f32],
                st: &mut u64,
                seed: u64,
                threads: usize,
            ) -> plasticity_core::Result<StepOutcome> {
                let w = unsafe { std::slice::from_raw_parts_mut(w as *mut T, numel) };
                let g = unsafe { std::slice::from_raw_parts(g as *const T, numel) };
                apollo::adamw_step(cfg, w, g, m1, m2, st, seed, threads)
            }
            by_dtype!(dtype, go(cfg, ptrs.0.get(), ptrs.1.get(), numel, m1, m2, st, seed, threads))
        })
    });
    let out = result.map_err(core_err)?;
    Ok((out.applied(), st))
}

/// Write the seeded projection of `period` (rank×d, N(0, 1/rank)) into `out`.
/// Whether this CPU runs the bf16 projection kernel (AVX512-BF16).
#[pyfunction]
pub fn bf16_projection_available() -> bool {
    plasticity_core::apollo::bf16_gemm::available()
}

#[pyfunction]
pub fn fill_projection(out: &Bound<'_, PyAny>, seed: u64, period: u64) -> PyResult<()> {
    let v = TensorView::new(out, "out")?;
    v.require_cpu()?;
    v.require_dtype(DType::F32)?;
    v.require_nonempty()?;
    if v.shape.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "out: expected (rank, d), got {:?}",
            v.shape
        )));
    }
    let (r, d) = (v.shape[0], v.shape[1]);
    let s = unsafe { v.slice_mut::<f32>() };
    apollo::generate_projection(seed, period, r, d, s);
    Ok(())
}
