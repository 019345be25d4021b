//! Python binding of `apollo::sharded`: the Apollo step on one tensor-parallel
//! shard, with the sums over ranks done by a Python callable (a
//! `torch.distributed.all_reduce` on the caller's process group).
//!
//! The callable never sees Rust memory: the step copies what must be summed
//! into two caller-owned scratch tensors (float32 and float64), calls
//! `all_reduce(kind, n)` with `kind` "f32" or "f64" and the element count, and
//! copies the sums back. The GIL is released for the math and taken only for
//! the call.

use half::{bf16, f16};
use plasticity_core::apollo::sharded::{self, Collective, Shard, ShardAxis};
use plasticity_core::{ApolloConfig, CoreError, DType, MatrixState, StepOutcome};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::apollo::{core_err, outcome_tuple, parse_precision, parse_scale_type, Workspace};
use crate::tensor::{require_disjoint, IndexView, SendPtr, TensorView};

/// Sums over ranks through the Python callable and the two scratch buffers.
struct PyCollective {
    all_reduce: Py<PyAny>,
    f32_buf: SendPtr,
    f32_len: usize,
    f64_buf: SendPtr,
    f64_len: usize,
}

impl PyCollective {
    fn call(&self, kind: &str, n: usize) -> plasticity_core::Result<()> {
        Python::attach(|py| self.all_reduce.call1(py, (kind, n)).map(|_| ()))
            .map_err(|e| CoreError::Collective(format!("all_reduce({kind:?}, {n}) raised: {e}")))
    }
}

fn too_small(kind: &str, n: usize, have: usize) -> CoreError {
    CoreError::Collective(format!("{kind} scratch holds {have} elements, this step sums {n}"))
}

impl Collective for PyCollective {
    fn sum_f32(&mut self, buf: &mut [f32]) -> plasticity_core::Result<()> {
        if buf.len() > self.f32_len {
            return Err(too_small("float32", buf.len(), self.f32_len));
        }
        // SAFETY: the scratch was checked (CPU, contiguous, float32, f32_len elements,
        // disjoint from the step's tensors) and outlives the step.
        let s = unsafe { std::slice::from_raw_parts_mut(self.f32_buf.get() as *mut f32, buf.len()) };
        s.copy_from_slice(buf);
        self.call("f32", buf.len())?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn sum_f64(&mut self, buf: &mut [f64]) -> plasticity_core::Result<()> {
        if buf.len() > self.f64_len {
            return Err(too_small("float64", buf.len(), self.f64_len));
        }
        // SAFETY: as above, float64.
        let s = unsafe { std::slice::from_raw_parts_mut(self.f64_buf.get() as *mut f64, buf.len()) };
        s.copy_from_slice(buf);
        self.call("f64", buf.len())?;
        buf.copy_from_slice(s);
        Ok(())
    }
}

/// One weight dtype's call of the core step (the dispatch below picks `T`).
macro_rules! step_as {
    ($t:ty, $cfg:expr, $shard:expr, $m:expr, $n:expr, $ptrs:expr, $m1:expr, $m2:expr, $st:expr, $comm:expr, $ws:expr) => {{
        // SAFETY: shapes, dtypes, devices and disjointness were checked by the caller.
        let w = unsafe { std::slice::from_raw_parts_mut($ptrs.0.get() as *mut $t, $m * $n) };
        let g = unsafe { std::slice::from_raw_parts($ptrs.1.get() as *const $t, $m * $n) };
        sharded::apollo_step_sharded::<$t>($cfg, $shard, $m, $n, w, g, $m1, $m2, $st, $comm, $ws)
    }};
}

/// One Apollo step on this rank's shard of a `global_shape` matrix, in place.
///
/// `axis` is "rows" (a column-parallel weight: a block of output rows) or "cols"
/// (row-parallel: a block of input columns) starting at `offset`. Every rank of
/// the group calls it with the same state; `all_reduce(kind, n)` must sum the
/// first `n` elements of `scratch_f32` ("f32") or `scratch_f64` ("f64") over
/// the group in place. Returns `(applied, step, prev_norm, limiter, refreshed)`.
#[pyfunction]
#[pyo3(signature = (
    weight, grad, exp_avg, exp_avg_sq, *, axis, offset, global_shape, all_reduce, scratch_f32, scratch_f64,
    step, seed, prev_norm, lr, beta1, beta2, eps, weight_decay, correct_bias, rank, scale_type, alpha,
    update_proj_gap, norm_growth_limit, stochastic_rounding, workspace, projection_precision = "auto"
))]
#[allow(clippy::too_many_arguments)]
pub fn apollo_step_sharded(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    exp_avg: &Bound<'_, PyAny>,
    exp_avg_sq: &Bound<'_, PyAny>,
    axis: &str,
    offset: usize,
    global_shape: (usize, usize),
    all_reduce: Py<PyAny>,
    scratch_f32: &Bound<'_, PyAny>,
    scratch_f64: &Bound<'_, PyAny>,
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
    projection_precision: &str,
) -> PyResult<(bool, u64, Option<f32>, f32, bool)> {
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
    let axis = match axis {
        "rows" => ShardAxis::Rows,
        "cols" => ShardAxis::Cols,
        other => {
            return Err(PyValueError::new_err(format!(
                "axis: expected 'rows' or 'cols', got {other:?}"
            )))
        }
    };
    let shard = Shard {
        axis,
        offset,
        global_m: global_shape.0,
        global_n: global_shape.1,
    };
    let w = TensorView::new(weight, "weight")?;
    let g = TensorView::new(grad, "grad")?;
    let m1 = TensorView::new(exp_avg, "exp_avg")?;
    let m2 = TensorView::new(exp_avg_sq, "exp_avg_sq")?;
    let s32 = TensorView::new(scratch_f32, "scratch_f32")?;
    // float64 scratch is borrowed through an int64 alias (the float views take 16/32-bit only)
    let alias = scratch_f64
        .call_method0("detach")?
        .call_method1("view", (py.import("torch")?.getattr("int64")?,))
        .map_err(|e| PyValueError::new_err(format!("scratch_f64: expected a float64 tensor ({e})")))?;
    if scratch_f64.getattr("dtype")?.str()?.to_str()? != "torch.float64" {
        return Err(PyValueError::new_err("scratch_f64: expected a float64 tensor"));
    }
    let s64 = IndexView::new(&alias, "scratch_f64")?;
    s64.require_cpu()?;
    for v in [&w, &g, &m1, &m2, &s32] {
        v.require_cpu()?;
    }
    w.require_nonempty()?;
    let [m, n] = w.shape[..] else {
        return Err(PyValueError::new_err(format!(
            "weight: Apollo needs a 2-D matrix, got shape {:?}",
            w.shape
        )));
    };
    g.require_dtype(w.dtype)?;
    g.require_shape(&w.shape)?;
    s32.require_dtype(DType::F32)?;
    for v in [&m1, &m2] {
        v.require_dtype(DType::F32)?;
    }
    require_disjoint(&[&w, &g, &m1, &m2, &s32])?;
    let s64_range = (s64.ptr as usize, s64.ptr as usize + 8 * s64.numel());
    for v in [&w, &g, &m1, &m2, &s32] {
        let elem = match v.dtype {
            DType::F32 => 4,
            _ => 2,
        };
        let (a, b) = (v.ptr as usize, v.ptr as usize + elem * v.numel());
        if a < s64_range.1 && s64_range.0 < b {
            return Err(PyValueError::new_err(format!("scratch_f64 overlaps {}", v.name)));
        }
    }
    let (mlen, mlen2) = (m1.numel(), m2.numel());

    let mut state = MatrixState { step, seed, prev_norm };
    let mut comm = PyCollective {
        all_reduce,
        f32_buf: SendPtr(s32.ptr),
        f32_len: s32.numel(),
        f64_buf: SendPtr(s64.ptr),
        f64_len: s64.numel(),
    };
    let ptrs = (SendPtr(w.ptr), SendPtr(g.ptr), SendPtr(m1.ptr), SendPtr(m2.ptr));
    let dtype = w.dtype;
    let result = py.detach(|| {
        let ptrs = ptrs;
        let mut guard = workspace.inner.lock().unwrap();
        let ws: &mut plasticity_core::apollo::Workspace = &mut guard;
        let (cfg, shard, st, comm) = (&cfg, &shard, &mut state, &mut comm);
        workspace.pool.install(move || {
            // SAFETY: the moments are checked float32 CPU tensors, disjoint from the rest; the
            // core checks their length against the shard's geometry before writing.
            let m1 = unsafe { std::slice::from_raw_parts_mut(ptrs.2.get() as *mut f32, mlen) };
            let m2 = unsafe { std::slice::from_raw_parts_mut(ptrs.3.get() as *mut f32, mlen2) };
            match dtype {
                DType::F32 => step_as!(f32, cfg, shard, m, n, ptrs, m1, m2, st, comm, ws),
                DType::BF16 => step_as!(bf16, cfg, shard, m, n, ptrs, m1, m2, st, comm, ws),
                DType::F16 => step_as!(f16, cfg, shard, m, n, ptrs, m1, m2, st, comm, ws),
            }
        })
    });
    let out: StepOutcome = result.map_err(core_err)?;
    let (applied, limiter, refreshed) = outcome_tuple(out);
    Ok((applied, state.step, state.prev_norm, limiter, refreshed))
}

/// Bytes one rank puts into the sums of one applied step on this shard.
#[pyfunction]
#[pyo3(signature = (*, axis, offset, global_shape, shape, rank))]
pub fn apollo_shard_reduced_bytes(
    axis: &str,
    offset: usize,
    global_shape: (usize, usize),
    shape: (usize, usize),
    rank: usize,
) -> PyResult<usize> {
    let axis = match axis {
        "rows" => ShardAxis::Rows,
        "cols" => ShardAxis::Cols,
        other => {
            return Err(PyValueError::new_err(format!(
                "axis: expected 'rows' or 'cols', got {other:?}"
            )))
        }
    };
    let shard = Shard {
        axis,
        offset,
        global_m: global_shape.0,
        global_n: global_shape.1,
    };
    Ok(shard.reduced_bytes(shape.0, shape.1, rank))
}
