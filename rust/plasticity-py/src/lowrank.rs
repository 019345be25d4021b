//! Python binding of `plasticity_core::lowrank`: the LoRA factors of one
//! weight delta. The delta is borrowed zero-copy (float64, the exact snapshot
//! deltas of float32 weights, through an int64 alias as in `merge`) or read
//! once into f64 (float32, the deltas of 16-bit weights); the factors come back
//! as little-endian float32 bytes, since their rank is known only afterwards.

use plasticity_core::lowrank::{self, RankRule};
use plasticity_core::DType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::tensor::{IndexView, TensorView};

/// Factor a 2-D CPU delta (float64 or float32, contiguous) as `lora_B · lora_A`.
///
/// Exactly one of `rank` (1..=min(m, n)) or `energy` (the share of ‖Δ‖²_F to
/// keep, in (0, 1]); `max_rank` caps either. Returns a dict with `rank`, `a`
/// (`rank × n` float32 bytes), `b` (`m × rank`), `singular_values`,
/// `energy_kept`, `rel_error` (measured with the float32 factors) and `norm`.
#[pyfunction]
#[pyo3(signature = (delta, *, rank=None, energy=None, max_rank=None))]
pub fn lowrank_factors<'py>(
    py: Python<'py>,
    delta: &Bound<'py, PyAny>,
    rank: Option<usize>,
    energy: Option<f64>,
    max_rank: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let rule = match (rank, energy) {
        (Some(r), None) => RankRule::Rank(r),
        (None, Some(e)) => RankRule::Energy(e),
        _ => return Err(PyValueError::new_err("give exactly one of rank or energy")),
    };
    let is_f64 = delta.getattr("dtype")?.str()?.to_str()? == "torch.float64";
    let (values, shape): (Vec<f64>, Vec<usize>) = if is_f64 {
        let torch = py.import("torch")?;
        let alias = delta.call_method0("detach")?.call_method1("view", (torch.getattr("int64")?,))?;
        let v = IndexView::new(&alias, "delta")?;
        v.require_cpu()?;
        // SAFETY: the view is a checked, contiguous, aligned CPU buffer of numel() 8-byte elements
        // kept alive by `v`; it is only read, while the GIL is held.
        let s = unsafe { std::slice::from_raw_parts(v.ptr as *const f64, v.numel()) };
        (s.to_vec(), v.shape.clone())
    } else {
        let v = TensorView::new(delta, "delta")?;
        v.require_cpu()?;
        if v.dtype != DType::F32 {
            return Err(PyTypeError::new_err("delta: expected float64 or float32"));
        }
        // SAFETY: as above, 4-byte elements.
        let s = unsafe { std::slice::from_raw_parts(v.ptr as *const f32, v.numel()) };
        (s.iter().map(|&x| x as f64).collect(), v.shape.clone())
    };
    let [rows, cols] = shape[..] else {
        return Err(PyValueError::new_err(format!("delta: expected a matrix, got shape {shape:?}")));
    };
    let f = py
        .detach(|| lowrank::low_rank(&values, rows, cols, rule, max_rank))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let out = PyDict::new(py);
    out.set_item("rank", f.rank)?;
    out.set_item("rows", f.rows)?;
    out.set_item("cols", f.cols)?;
    out.set_item("a", PyBytes::new(py, bytemuck::cast_slice(&f.a)))?;
    out.set_item("b", PyBytes::new(py, bytemuck::cast_slice(&f.b)))?;
    out.set_item("singular_values", f.singular_values)?;
    out.set_item("energy_kept", f.energy_kept)?;
    out.set_item("rel_error", f.rel_error)?;
    out.set_item("norm", f.norm)?;
    Ok(out)
}
