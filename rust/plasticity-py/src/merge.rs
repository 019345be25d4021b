//! Python bindings of the task-vector arithmetic (`plasticity_core::merge`):
//! zero-copy on torch CPU tensors, every check before the first write, GIL
//! released while the core runs (on rayon's global pool).
//!
//! float64 tensors (the exact deltas of float32 weights) have no `DType` in the
//! core's `TensorView`; they are borrowed through DLPack as an int64 alias
//! (`t.detach().view(torch.int64)`: same storage, same checks on device,
//! contiguity and shape) and read as f64 here, after checking the original's
//! dtype is `torch.float64`.

use half::{bf16, f16};
use plasticity_core::merge::{self, Real, Weight};
use plasticity_core::{DType, Element};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::tensor::{Device, IndexView, SendPtr, TensorView};

fn core_err(e: plasticity_core::CoreError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The dtypes a task-vector buffer may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F32,
    F64,
    BF16,
    F16,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::F32 => "float32",
            Kind::F64 => "float64",
            Kind::BF16 => "bfloat16",
            Kind::F16 => "float16",
        }
    }
    fn size(self) -> usize {
        match self {
            Kind::F64 => 8,
            Kind::F32 => 4,
            Kind::BF16 | Kind::F16 => 2,
        }
    }
}

#[allow(dead_code)] // the variants only keep their capsule alive
enum Keep<'py> {
    Float(TensorView<'py>),
    Double(IndexView<'py>),
}

/// A checked, borrowed CPU tensor of one of the [`Kind`]s.
struct View<'py> {
    _keep: Keep<'py>,
    name: String,
    ptr: *mut u8,
    kind: Kind,
    shape: Vec<usize>,
}

impl<'py> View<'py> {
    fn new(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        let named = |e: PyErr| rename(obj.py(), e, name);
        let is_f64 = obj.hasattr("dtype")?
            && obj.hasattr("view")?
            && obj.getattr("dtype")?.str()?.to_str()? == "torch.float64";
        let (keep, ptr, kind, shape, device) = if is_f64 {
            let torch = obj.py().import("torch")?;
            let alias = obj
                .call_method0("detach")
                .and_then(|t| t.call_method1("view", (torch.getattr("int64")?,)))
                .map_err(named)?;
            let v = IndexView::new(&alias, "tensor").map_err(named)?;
            let (p, s, d) = (v.ptr, v.shape.clone(), v.device);
            (Keep::Double(v), p, Kind::F64, s, d)
        } else {
            let v = TensorView::new(obj, "tensor").map_err(named)?;
            let k = match v.dtype {
                DType::F32 => Kind::F32,
                DType::BF16 => Kind::BF16,
                DType::F16 => Kind::F16,
            };
            let (p, s, d) = (v.ptr, v.shape.clone(), v.device);
            (Keep::Float(v), p, k, s, d)
        };
        match device {
            Device::Cpu => {}
            Device::Cuda(i) => {
                return Err(PyValueError::new_err(format!(
                    "{name}: tensor is on cuda:{i}; task-vector arithmetic runs on CPU tensors"
                )))
            }
            Device::Other(d) => {
                return Err(PyValueError::new_err(format!(
                    "{name}: unsupported device type {d}"
                )))
            }
        }
        let numel: usize = shape.iter().product();
        if numel > 0 && !(ptr as usize).is_multiple_of(kind.size()) {
            return Err(PyValueError::new_err(format!(
                "{name}: data is not aligned to its element size"
            )));
        }
        Ok(Self {
            _keep: keep,
            name: name.to_string(),
            ptr,
            kind,
            shape,
        })
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn range(&self) -> (usize, usize) {
        let s = self.ptr as usize;
        (s, s + self.numel() * self.kind.size())
    }

    fn same_shape(&self, other: &View) -> PyResult<()> {
        if self.shape != other.shape {
            return Err(PyValueError::new_err(format!(
                "{} has shape {:?} but {} has shape {:?}",
                other.name, other.shape, self.name, self.shape
            )));
        }
        Ok(())
    }

    fn send(&self) -> (SendPtr, usize) {
        (SendPtr(self.ptr), self.numel())
    }
}

/// Re-raise `e` (same Python type) with the argument's name in front.
fn rename(py: Python<'_>, e: PyErr, name: &str) -> PyErr {
    let msg = e.value(py).to_string();
    let msg = msg.strip_prefix("tensor: ").unwrap_or(&msg).to_string();
    if e.is_instance_of::<PyTypeError>(py) {
        PyTypeError::new_err(format!("{name}: {msg}"))
    } else {
        PyValueError::new_err(format!("{name}: {msg}"))
    }
}

fn wrong_kind(v: &View, allowed: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{}: expected {allowed}, got {}",
        v.name,
        v.kind.name()
    ))
}

/// The written view must not share memory with any other.
fn require_disjoint(out: &View, others: &[&View]) -> PyResult<()> {
    let (a0, a1) = out.range();
    for o in others {
        let (b0, b1) = o.range();
        if a0 < b1 && b0 < a1 {
            return Err(PyValueError::new_err(format!(
                "{} and {} share memory; the output must be a distinct tensor",
                out.name, o.name
            )));
        }
    }
    Ok(())
}

/// # Safety
/// `p` points at `n` live, aligned `T`s (or `n == 0`) that nothing writes meanwhile.
unsafe fn slice<'a, T>(p: &SendPtr, n: usize) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    std::slice::from_raw_parts(p.get() as *const T, n)
}

/// # Safety
/// As [`slice`], and no other reference to that memory exists.
#[allow(clippy::mut_from_ref)]
unsafe fn slice_mut<'a, T>(p: &SendPtr, n: usize) -> &'a mut [T] {
    if n == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(p.get() as *mut T, n)
}

// ---------------------------------------------------------------- δ, w + s·δ

fn delta_typed<W: Element, D: Real>(
    l: &(SendPtr, usize),
    b: &(SendPtr, usize),
    o: &(SendPtr, usize),
) -> plasticity_core::Result<()> {
    // SAFETY: dtypes, sizes and disjointness were checked; the views outlive the call.
    unsafe { merge::delta_of::<W, D>(slice(&l.0, l.1), slice(&b.0, b.1), slice_mut(&o.0, o.1)) }
}

/// `out = live − base`, elementwise, each value widened to `out`'s dtype and
/// subtracted once there.
///
/// live, base: same dtype (float32, bfloat16 or float16) and shape, CPU,
/// contiguous. out: same shape, float64 or float32. float64 for float32
/// weights and float32 for 16-bit weights give the exact difference (see
/// `tv_roundtrip`); float32 for float32 weights is the rounded difference
/// torch/mergekit compute.
#[pyfunction]
pub fn tv_delta_of(
    py: Python<'_>,
    live: &Bound<'_, PyAny>,
    base: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let l = View::new(live, "live")?;
    let b = View::new(base, "base")?;
    let o = View::new(out, "out")?;
    if l.kind == Kind::F64 {
        return Err(wrong_kind(&l, "float32, bfloat16 or float16 weights"));
    }
    if b.kind != l.kind {
        return Err(PyTypeError::new_err(format!(
            "base: expected dtype {} (the dtype of live), got {}",
            l.kind.name(),
            b.kind.name()
        )));
    }
    l.same_shape(&b)?;
    l.same_shape(&o)?;
    if !matches!(o.kind, Kind::F32 | Kind::F64) {
        return Err(wrong_kind(&o, "float32 or float64"));
    }
    require_disjoint(&o, &[&l, &b])?;
    let (wk, ok) = (l.kind, o.kind);
    let (lp, bp, op) = (l.send(), b.send(), o.send());
    py.detach(move || match (wk, ok) {
        (Kind::F32, Kind::F64) => delta_typed::<f32, f64>(&lp, &bp, &op),
        (Kind::F32, _) => delta_typed::<f32, f32>(&lp, &bp, &op),
        (Kind::BF16, Kind::F64) => delta_typed::<bf16, f64>(&lp, &bp, &op),
        (Kind::BF16, _) => delta_typed::<bf16, f32>(&lp, &bp, &op),
        (Kind::F16, Kind::F64) => delta_typed::<f16, f64>(&lp, &bp, &op),
        (Kind::F16, _) => delta_typed::<f16, f32>(&lp, &bp, &op),
        (Kind::F64, _) => unreachable!(),
    })
    .map_err(core_err)
}

fn add_typed<W: Weight, D: Real>(
    w: &(SendPtr, usize),
    d: &(SendPtr, usize),
    scale: f64,
) -> plasticity_core::Result<()> {
    // SAFETY: as in delta_typed.
    unsafe { merge::add_delta::<W, D>(slice_mut(&w.0, w.1), slice(&d.0, d.1), scale) }
}

/// `weight += scale·delta` in place, in float64 for float32 weights and in
/// float32 for bfloat16/float16 weights, rounded once.
///
/// weight: float32/bfloat16/float16, CPU, contiguous. delta: same shape,
/// float32 or float64, finite. Refused untouched if the scale or any delta is
/// not finite, or if a finite weight would overflow.
#[pyfunction]
#[pyo3(signature = (weight, delta, scale = 1.0))]
pub fn tv_add_delta_(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    delta: &Bound<'_, PyAny>,
    scale: f64,
) -> PyResult<()> {
    let w = View::new(weight, "weight")?;
    let d = View::new(delta, "delta")?;
    if w.kind == Kind::F64 {
        return Err(wrong_kind(&w, "float32, bfloat16 or float16 weights"));
    }
    if !matches!(d.kind, Kind::F32 | Kind::F64) {
        return Err(wrong_kind(&d, "float32 or float64"));
    }
    w.same_shape(&d)?;
    require_disjoint(&w, &[&d])?;
    let (wk, dk) = (w.kind, d.kind);
    let (wp, dp) = (w.send(), d.send());
    py.detach(move || match (wk, dk) {
        (Kind::F32, Kind::F64) => add_typed::<f32, f64>(&wp, &dp, scale),
        (Kind::F32, _) => add_typed::<f32, f32>(&wp, &dp, scale),
        (Kind::BF16, Kind::F64) => add_typed::<bf16, f64>(&wp, &dp, scale),
        (Kind::BF16, _) => add_typed::<bf16, f32>(&wp, &dp, scale),
        (Kind::F16, Kind::F64) => add_typed::<f16, f64>(&wp, &dp, scale),
        (Kind::F16, _) => add_typed::<f16, f32>(&wp, &dp, scale),
        (Kind::F64, _) => unreachable!(),
    })
    .map_err(core_err)
}

fn roundtrip_typed<W: Weight>(
    l: &(SendPtr, usize),
    b: &(SendPtr, usize),
) -> plasticity_core::Result<merge::RoundTrip> {
    // SAFETY: as in delta_typed.
    unsafe { merge::check_roundtrip::<W>(slice(&l.0, l.1), slice(&b.0, b.1)) }
}

/// Whether `base + (live − base)` and `live − (live − base)` reproduce live and
/// base bit for bit (with the exact-delta arithmetic of `tv_delta_of` /
/// `tv_add_delta_`). Returns `(elements, not_exact, signed_zero)`: `not_exact`
/// counts failing elements, of which `signed_zero` are a −0.0 that comes back
/// as +0.0 (equal as numbers).
#[pyfunction]
pub fn tv_roundtrip(
    py: Python<'_>,
    live: &Bound<'_, PyAny>,
    base: &Bound<'_, PyAny>,
) -> PyResult<(usize, usize, usize)> {
    let l = View::new(live, "live")?;
    let b = View::new(base, "base")?;
    if l.kind == Kind::F64 || b.kind != l.kind {
        return Err(PyTypeError::new_err(format!(
            "live and base must share one weight dtype (float32, bfloat16 or float16), got {} and {}",
            l.kind.name(),
            b.kind.name()
        )));
    }
    l.same_shape(&b)?;
    let k = l.kind;
    let (lp, bp) = (l.send(), b.send());
    let r = py
        .detach(move || match k {
            Kind::F32 => roundtrip_typed::<f32>(&lp, &bp),
            Kind::BF16 => roundtrip_typed::<bf16>(&lp, &bp),
            Kind::F16 => roundtrip_typed::<f16>(&lp, &bp),
            Kind::F64 => unreachable!(),
        })
        .map_err(core_err)?;
    Ok((r.elements, r.not_exact, r.signed_zero))
}

// ---------------------------------------------------------------- merges

/// Borrow the deltas and the output: all float32 or all float64, one shape.
fn merge_views<'py>(
    deltas: &[Bound<'py, PyAny>],
    out: &Bound<'py, PyAny>,
) -> PyResult<(Vec<View<'py>>, View<'py>)> {
    let o = View::new(out, "out")?;
    if !matches!(o.kind, Kind::F32 | Kind::F64) {
        return Err(wrong_kind(&o, "float32 or float64"));
    }
    if deltas.is_empty() {
        return Err(PyValueError::new_err("deltas: no task vectors to merge"));
    }
    let mut vs = Vec::with_capacity(deltas.len());
    for (i, d) in deltas.iter().enumerate() {
        let v = View::new(d, &format!("deltas[{i}]"))?;
        if v.kind != o.kind {
            return Err(PyTypeError::new_err(format!(
                "deltas[{i}]: expected dtype {} (the dtype of out), got {}",
                o.kind.name(),
                v.kind.name()
            )));
        }
        o.same_shape(&v)?;
        vs.push(v);
    }
    let refs: Vec<&View> = vs.iter().collect();
    require_disjoint(&o, &refs)?;
    Ok((vs, o))
}

fn ta_typed<D: Real>(
    ds: &[(SendPtr, usize)],
    o: &(SendPtr, usize),
    weights: &[f64],
    lambda: f64,
    normalize: bool,
) -> plasticity_core::Result<()> {
    // SAFETY: as in delta_typed; deltas are only read, out is disjoint from them.
    unsafe {
        let d: Vec<&[D]> = ds.iter().map(|(p, n)| slice::<D>(p, *n)).collect();
        merge::task_arithmetic::<D>(&d, weights, lambda, normalize, slice_mut(&o.0, o.1))
    }
}

/// Task arithmetic: `out = lam · Σ wᵢ·deltas[i]` (÷ Σ wᵢ with `normalize`),
/// mergekit 0.1.5's `task_arithmetic` for one tensor.
///
/// deltas: list of same-shape CPU tensors, all float32 or all float64, finite;
/// out: same shape and dtype (the math runs in that dtype, mergekit's order).
#[pyfunction]
#[pyo3(signature = (deltas, weights, lam, normalize, out))]
pub fn tv_task_arithmetic(
    py: Python<'_>,
    deltas: Vec<Bound<'_, PyAny>>,
    weights: Vec<f64>,
    lam: f64,
    normalize: bool,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (vs, o) = merge_views(&deltas, out)?;
    let ds: Vec<(SendPtr, usize)> = vs.iter().map(|v| v.send()).collect();
    let (op, k) = (o.send(), o.kind);
    py.detach(move || match k {
        Kind::F64 => ta_typed::<f64>(&ds, &op, &weights, lam, normalize),
        _ => ta_typed::<f32>(&ds, &op, &weights, lam, normalize),
    })
    .map_err(core_err)
}

type TrimTuple = (usize, f64, usize, usize);

fn ties_typed<D: Real>(
    ds: &[(SendPtr, usize)],
    o: &(SendPtr, usize),
    weights: &[f64],
    densities: &[f64],
    lambda: f64,
    normalize: bool,
) -> plasticity_core::Result<Vec<TrimTuple>> {
    // SAFETY: as in ta_typed.
    let trims = unsafe {
        let d: Vec<&[D]> = ds.iter().map(|(p, n)| slice::<D>(p, *n)).collect();
        merge::ties::<D>(
            &d,
            weights,
            densities,
            lambda,
            normalize,
            slice_mut(&o.0, o.1),
        )?
    };
    Ok(trims
        .into_iter()
        .map(|t| (t.kept, t.threshold, t.tied, t.tied_kept))
        .collect())
}

/// TIES-merging of one tensor with mergekit 0.1.5's semantics (per-tensor
/// top-k trim by |δ|, weights before the sign election, +1 on a zero sum,
/// disjoint sum ÷ agreeing weights with `normalize`, × lam).
///
/// deltas/out as in `tv_task_arithmetic`; weights and densities: one per
/// delta, densities in (0, 1]. Returns per delta `(kept, threshold, tied,
/// tied_kept)`: elements kept, the |δ| cut, how many elements equal the cut
/// and how many of those were kept (lowest indices first).
#[pyfunction]
#[pyo3(signature = (deltas, weights, densities, lam, normalize, out))]
pub fn tv_ties(
    py: Python<'_>,
    deltas: Vec<Bound<'_, PyAny>>,
    weights: Vec<f64>,
    densities: Vec<f64>,
    lam: f64,
    normalize: bool,
    out: &Bound<'_, PyAny>,
) -> PyResult<Vec<TrimTuple>> {
    let (vs, o) = merge_views(&deltas, out)?;
    let ds: Vec<(SendPtr, usize)> = vs.iter().map(|v| v.send()).collect();
    let (op, k) = (o.send(), o.kind);
    py.detach(move || match k {
        Kind::F64 => ties_typed::<f64>(&ds, &op, &weights, &densities, lam, normalize),
        _ => ties_typed::<f32>(&ds, &op, &weights, &densities, lam, normalize),
    })
    .map_err(core_err)
}

// ---------------------------------------------------------------- diff

fn stats_b<A: merge::Scalar>(
    a: &[A],
    bk: Kind,
    b: &(SendPtr, usize),
) -> plasticity_core::Result<merge::PairStats> {
    // SAFETY: as in delta_typed (read only).
    unsafe {
        match bk {
            Kind::F32 => merge::pair_stats(a, slice::<f32>(&b.0, b.1)),
            Kind::F64 => merge::pair_stats(a, slice::<f64>(&b.0, b.1)),
            Kind::BF16 => merge::pair_stats(a, slice::<bf16>(&b.0, b.1)),
            Kind::F16 => merge::pair_stats(a, slice::<f16>(&b.0, b.1)),
        }
    }
}

/// `(Σa², Σb², Σab)` of two same-shape CPU tensors (float32/64, bfloat16,
/// float16, dtypes may differ), accumulated in float64.
#[pyfunction]
pub fn tv_pair_stats(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<(f64, f64, f64)> {
    let av = View::new(a, "a")?;
    let bv = View::new(b, "b")?;
    av.same_shape(&bv)?;
    let (ak, bk) = (av.kind, bv.kind);
    let (ap, bp) = (av.send(), bv.send());
    let s = py
        .detach(move || unsafe {
            // SAFETY: as in delta_typed (read only).
            match ak {
                Kind::F32 => stats_b(slice::<f32>(&ap.0, ap.1), bk, &bp),
                Kind::F64 => stats_b(slice::<f64>(&ap.0, ap.1), bk, &bp),
                Kind::BF16 => stats_b(slice::<bf16>(&ap.0, ap.1), bk, &bp),
                Kind::F16 => stats_b(slice::<f16>(&ap.0, ap.1), bk, &bp),
            }
        })
        .map_err(core_err)?;
    Ok((s.sq_a, s.sq_b, s.dot))
}

// ---------------------------------------------------------------- TIES, paper variant

enum Select {
    F32(merge::GlobalSelect<f32>),
    F64(merge::GlobalSelect<f64>),
}

/// Streaming exact k-th largest |x| over many tensors (the TIES paper's
/// model-wide trim threshold): `observe` every tensor, `end_pass`, repeat
/// until `done` (2 passes for float32, 4 for float64), then `threshold`.
#[pyclass(module = "plasticity._plasticity")]
pub struct TvGlobalSelect {
    inner: Select,
}

#[pymethods]
impl TvGlobalSelect {
    #[new]
    #[pyo3(signature = (k, float64 = false))]
    fn new(k: usize, float64: bool) -> PyResult<Self> {
        let inner = if float64 {
            Select::F64(merge::GlobalSelect::new(k).map_err(core_err)?)
        } else {
            Select::F32(merge::GlobalSelect::new(k).map_err(core_err)?)
        };
        Ok(Self { inner })
    }

    fn observe(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = View::new(x, "x")?;
        let (p, n) = v.send();
        match (&mut self.inner, v.kind) {
            (Select::F32(s), Kind::F32) => py.detach(|| {
                // SAFETY: checked view, alive for the call, read only.
                s.observe(unsafe { slice::<f32>(&p, n) })
            }),
            (Select::F64(s), Kind::F64) => py.detach(|| s.observe(unsafe { slice::<f64>(&p, n) })),
            (Select::F32(_), _) => return Err(wrong_kind(&v, "float32")),
            (Select::F64(_), _) => return Err(wrong_kind(&v, "float64")),
        }
        .map_err(core_err)
    }

    fn end_pass(&mut self) -> PyResult<()> {
        match &mut self.inner {
            Select::F32(s) => s.end_pass(),
            Select::F64(s) => s.end_pass(),
        }
        .map_err(core_err)
    }

    #[getter]
    fn done(&self) -> bool {
        match &self.inner {
            Select::F32(s) => s.done(),
            Select::F64(s) => s.done(),
        }
    }

    /// The k-th largest |x| once done, else None.
    #[getter]
    fn threshold(&self) -> Option<f64> {
        match &self.inner {
            Select::F32(s) => s.threshold().map(|x| x as f64),
            Select::F64(s) => s.threshold(),
        }
    }
}

/// How many of `n` elements the TIES paper's trim keeps: `min(n, int(n·density) + 1)`.
#[pyfunction]
pub fn tv_paper_keep_count(n: usize, density: f64) -> PyResult<usize> {
    if !(density > 0.0 && density <= 1.0) {
        return Err(PyValueError::new_err(format!(
            "density must be in (0, 1], got {density}"
        )));
    }
    Ok(merge::paper_keep_count(n, density))
}

fn paper_views<'py>(deltas: &[Bound<'py, PyAny>]) -> PyResult<Vec<View<'py>>> {
    if deltas.is_empty() {
        return Err(PyValueError::new_err("deltas: no task vectors to merge"));
    }
    let mut vs: Vec<View> = Vec::with_capacity(deltas.len());
    for (i, d) in deltas.iter().enumerate() {
        let v = View::new(d, &format!("deltas[{i}]"))?;
        if !matches!(v.kind, Kind::F32 | Kind::F64)
            || v.kind != vs.first().map_or(v.kind, |f| f.kind)
        {
            return Err(wrong_kind(&v, "float32 or float64, one dtype for all"));
        }
        if let Some(f) = vs.first() {
            f.same_shape(&v)?;
        }
        vs.push(v);
    }
    Ok(vs)
}

/// Σ over the elements of sign(Σₜ wₜ·τ̂ₜ) for one tensor (τ̂: |τ| ≥ threshold);
/// the sign of its sum over the model is the paper's zero-sum "majority" sign.
#[pyfunction]
pub fn tv_paper_sign_sum(
    py: Python<'_>,
    deltas: Vec<Bound<'_, PyAny>>,
    weights: Vec<f64>,
    thresholds: Vec<f64>,
) -> PyResult<i64> {
    let vs = paper_views(&deltas)?;
    let ds: Vec<(SendPtr, usize)> = vs.iter().map(|v| v.send()).collect();
    let k = vs[0].kind;
    py.detach(move || unsafe {
        // SAFETY: checked views, alive for the call, read only.
        match k {
            Kind::F64 => {
                let d: Vec<&[f64]> = ds.iter().map(|(p, n)| slice::<f64>(p, *n)).collect();
                merge::paper_sign_sum(&d, &weights, &thresholds)
            }
            _ => {
                let d: Vec<&[f32]> = ds.iter().map(|(p, n)| slice::<f32>(p, *n)).collect();
                let t: Vec<f32> = thresholds.iter().map(|&x| x as f32).collect();
                merge::paper_sign_sum(&d, &weights, &t)
            }
        }
    })
    .map_err(core_err)
}

/// TIES as the paper's code does it, for one tensor, given the model-wide
/// thresholds and majority sign (see plasticity_core::merge::ties_paper).
#[pyfunction]
pub fn tv_ties_paper(
    py: Python<'_>,
    deltas: Vec<Bound<'_, PyAny>>,
    weights: Vec<f64>,
    thresholds: Vec<f64>,
    majority: i64,
    lam: f64,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (vs, o) = merge_views(&deltas, out)?;
    let ds: Vec<(SendPtr, usize)> = vs.iter().map(|v| v.send()).collect();
    let (op, k) = (o.send(), o.kind);
    let maj = majority.signum() as i8;
    py.detach(move || unsafe {
        // SAFETY: as in ta_typed.
        match k {
            Kind::F64 => {
                let d: Vec<&[f64]> = ds.iter().map(|(p, n)| slice::<f64>(p, *n)).collect();
                merge::ties_paper(&d, &weights, &thresholds, maj, lam, slice_mut(&op.0, op.1))
            }
            _ => {
                let d: Vec<&[f32]> = ds.iter().map(|(p, n)| slice::<f32>(p, *n)).collect();
                let t: Vec<f32> = thresholds.iter().map(|&x| x as f32).collect();
                merge::ties_paper(&d, &weights, &t, maj, lam, slice_mut(&op.0, op.1))
            }
        }
    })
    .map_err(core_err)
}
