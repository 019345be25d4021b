//! Python binding of `apollo::sharded`: the Apollo step on this rank's shards of
//! several matrices at once, with the sums over ranks done by a Python callable
//! (a `torch.distributed.all_reduce` on the caller's process group).
//!
//! The callable gets `(kind, buffer)`: "f32" or "f64" and a `bytearray` holding
//! the values to sum, which it must sum in place (`torch.frombuffer` shares its
//! memory) and leave the same length. Three calls per step at most, however
//! many matrices. The GIL is released for the math and taken only for the calls.

use plasticity_core::apollo::sharded::{self, Collective, Shard, ShardAxis, ShardJob};
use plasticity_core::{ApolloConfig, CoreError, DType, Element, MatrixState, StepOutcome};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

use crate::apollo::{apollo_config, core_err, outcome_tuple, Workspace};
use crate::tensor::{require_disjoint, SendPtr, TensorView};

/// Sums over ranks through the Python callable.
struct PyCollective {
    all_reduce: Py<PyAny>,
}

impl PyCollective {
    fn sum<E: bytemuck::Pod>(&self, kind: &str, buf: &mut [E]) -> plasticity_core::Result<()> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        Python::attach(|py| -> PyResult<()> {
            let ba = PyByteArray::new(py, bytes);
            self.all_reduce.call1(py, (kind, ba.clone()))?;
            // SAFETY: read while the GIL is held and nothing else runs on the bytearray.
            let back = unsafe { ba.as_bytes() };
            if back.len() != bytes.len() {
                return Err(PyValueError::new_err(format!(
                    "all_reduce changed the buffer's length from {} to {} bytes",
                    bytes.len(),
                    back.len()
                )));
            }
            bytes.copy_from_slice(back);
            Ok(())
        })
        .map_err(|e| {
            CoreError::Collective(format!(
                "all_reduce({kind:?}, {} values): {e}",
                buf_len::<E>(bytes.len())
            ))
        })
    }
}

fn buf_len<E>(bytes: usize) -> usize {
    bytes / std::mem::size_of::<E>()
}

impl Collective for PyCollective {
    fn sum_f32(&mut self, buf: &mut [f32]) -> plasticity_core::Result<()> {
        self.sum("f32", buf)
    }
    fn sum_f64(&mut self, buf: &mut [f64]) -> plasticity_core::Result<()> {
        self.sum("f64", buf)
    }
}

fn parse_shard(axis: &str, offset: usize, global: (usize, usize)) -> PyResult<Shard> {
    let axis = match axis {
        "rows" => ShardAxis::Rows,
        "cols" => ShardAxis::Cols,
        other => {
            return Err(PyValueError::new_err(format!(
                "axis: expected 'rows' or 'cols', got {other:?}"
            )))
        }
    };
    Ok(Shard {
        axis,
        offset,
        global_m: global.0,
        global_n: global.1,
    })
}

/// One matrix's raw pointers and shape, checked while the GIL was held.
struct RawJob {
    shard: Shard,
    m: usize,
    n: usize,
    w: SendPtr,
    g: SendPtr,
    m1: SendPtr,
    m2: SendPtr,
    mlen: usize,
    state: MatrixState,
}

fn run<T: Element>(
    cfg: &ApolloConfig,
    raw: &mut [RawJob],
    comm: &mut PyCollective,
    ws: &mut plasticity_core::apollo::Workspace,
) -> plasticity_core::Result<Vec<StepOutcome>> {
    let mut jobs: Vec<ShardJob<'_, T>> = raw
        .iter_mut()
        .map(|r| {
            let numel = r.m * r.n;
            // SAFETY: every tensor was checked (CPU, contiguous, dtype, shape, pairwise disjoint
            // across all jobs) and outlives the call; the core checks the moments' lengths.
            unsafe {
                ShardJob {
                    shard: r.shard,
                    m: r.m,
                    n: r.n,
                    w: std::slice::from_raw_parts_mut(r.w.get() as *mut T, numel),
                    g: std::slice::from_raw_parts(r.g.get() as *const T, numel),
                    exp_avg: std::slice::from_raw_parts_mut(r.m1.get() as *mut f32, r.mlen),
                    exp_avg_sq: std::slice::from_raw_parts_mut(r.m2.get() as *mut f32, r.mlen),
                    state: &mut r.state,
                }
            }
        })
        .collect();
    sharded::apollo_step_sharded_many(cfg, &mut jobs, comm, ws)
}

/// One Apollo step on this rank's shards of several matrices, in place, with one
/// config (a parameter group) and one weight dtype.
///
/// `jobs`: a list of `(weight, grad, exp_avg, exp_avg_sq, axis, offset, global_shape, step, seed,
/// prev_norm)`; `axis` "rows" (a column-parallel weight's block of output rows) or "cols" (a
/// row-parallel weight's block of input columns) starting at `offset`. Every rank of the group
/// calls it with the same matrices in the same order. Returns one `(applied, step, prev_norm,
/// limiter, refreshed)` per job.
#[pyfunction]
#[pyo3(signature = (
    jobs, *, all_reduce, lr, beta1, beta2, eps, weight_decay, correct_bias, rank, scale_type, alpha,
    update_proj_gap, norm_growth_limit, stochastic_rounding, workspace, projection_precision = "auto"
))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn apollo_step_sharded(
    py: Python<'_>,
    jobs: Vec<Bound<'_, PyAny>>,
    all_reduce: Py<PyAny>,
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
) -> PyResult<Vec<(bool, u64, Option<f32>, f32, bool)>> {
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
    let mut views: Vec<TensorView<'_>> = Vec::with_capacity(4 * jobs.len());
    let mut raw: Vec<RawJob> = Vec::with_capacity(jobs.len());
    let mut dtype: Option<DType> = None;
    for (i, job) in jobs.iter().enumerate() {
        #[allow(clippy::type_complexity)]
        let (w, g, m1, m2, axis, offset, global, step, seed, prev_norm): (
            Bound<'_, PyAny>,
            Bound<'_, PyAny>,
            Bound<'_, PyAny>,
            Bound<'_, PyAny>,
            String,
            usize,
            (usize, usize),
            u64,
            u64,
            Option<f32>,
        ) = job
            .extract()
            .map_err(|e| PyValueError::new_err(format!("jobs[{i}]: {e}")))?;
        let shard = parse_shard(&axis, offset, global)?;
        let w = TensorView::new(&w, "weight")?;
        let g = TensorView::new(&g, "grad")?;
        let m1 = TensorView::new(&m1, "exp_avg")?;
        let m2 = TensorView::new(&m2, "exp_avg_sq")?;
        for v in [&w, &g, &m1, &m2] {
            v.require_cpu()?;
        }
        w.require_nonempty()?;
        let [m, n] = w.shape[..] else {
            return Err(PyValueError::new_err(format!(
                "jobs[{i}] weight: Apollo needs a 2-D matrix, got shape {:?}",
                w.shape
            )));
        };
        if *dtype.get_or_insert(w.dtype) != w.dtype {
            return Err(PyValueError::new_err(format!(
                "jobs[{i}]: every weight of one call must share a dtype"
            )));
        }
        g.require_dtype(w.dtype)?;
        g.require_shape(&w.shape)?;
        m1.require_dtype(DType::F32)?;
        m2.require_dtype(DType::F32)?;
        if m1.numel() != m2.numel() {
            return Err(PyValueError::new_err(format!(
                "jobs[{i}]: exp_avg and exp_avg_sq differ in size"
            )));
        }
        raw.push(RawJob {
            shard,
            m,
            n,
            w: SendPtr(w.ptr),
            g: SendPtr(g.ptr),
            m1: SendPtr(m1.ptr),
            m2: SendPtr(m2.ptr),
            mlen: m1.numel(),
            state: MatrixState {
                step,
                seed,
                prev_norm,
            },
        });
        views.extend([w, g, m1, m2]);
    }
    require_disjoint(&views.iter().collect::<Vec<_>>())?;
    let Some(dtype) = dtype else {
        return Ok(Vec::new());
    };
    let mut comm = PyCollective { all_reduce };
    let result = py.detach(|| {
        let mut guard = workspace.inner.lock().unwrap();
        let ws: &mut plasticity_core::apollo::Workspace = &mut guard;
        let (cfg, raw, comm) = (&cfg, &mut raw, &mut comm);
        workspace.pool.install(move || by_dtype!(dtype, run(cfg, raw, comm, ws)))
    });
    let outs = result.map_err(core_err)?;
    Ok(outs
        .into_iter()
        .zip(&raw)
        .map(|(out, r)| {
            let (applied, limiter, refreshed) = outcome_tuple(out);
            (applied, r.state.step, r.state.prev_norm, limiter, refreshed)
        })
        .collect())
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
    Ok(parse_shard(axis, offset, global_shape)?.reduced_bytes(shape.0, shape.1, rank))
}
