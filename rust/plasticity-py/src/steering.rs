//! Python binding of the steering addition: `residual[t] += table[slots[t]]`,
//! in place on torch CPU tensors (the CUDA kernel is wired by the GPU path).

use plasticity_core::{steering, Element};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::tensor::{require_disjoint, IndexDType, IndexView, SendPtr, TensorView};

fn run<T: Element>(
    res: &SendPtr,
    n_res: usize,
    hidden: usize,
    tab: &SendPtr,
    n_tab: usize,
    slots: &SendPtr,
    n: usize,
    i64s: bool,
) -> plasticity_core::Result<()> {
    // SAFETY: dtypes, sizes and disjointness were checked by the caller, and the
    // views stay alive for the whole call.
    let r = unsafe { std::slice::from_raw_parts_mut(res.get() as *mut T, n_res) };
    let t = unsafe { std::slice::from_raw_parts(tab.get() as *const T, n_tab) };
    if i64s {
        steering::add_rows(r, hidden, t, unsafe {
            std::slice::from_raw_parts(slots.get() as *const i64, n)
        })
    } else {
        steering::add_rows(r, hidden, t, unsafe {
            std::slice::from_raw_parts(slots.get() as *const i32, n)
        })
    }
}

/// `residual[t, :] += table[slots[t], :]` for `t < len(slots)`, in place.
///
/// residual: [tokens, hidden] float32/bfloat16/float16, CPU, contiguous.
/// table: [num_slots, hidden], same dtype; row 0 is "not steered" and never read.
/// slots: [n] int32/int64 with n ≤ tokens and every value in 0..num_slots.
/// Everything is checked before the first write.
#[pyfunction]
pub fn steering_add_(
    py: Python<'_>,
    residual: &Bound<'_, PyAny>,
    table: &Bound<'_, PyAny>,
    slots: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let r = TensorView::new(residual, "residual")?;
    let t = TensorView::new(table, "table")?;
    let s = IndexView::new(slots, "slots")?;
    r.require_cpu()?;
    t.require_cpu()?;
    s.require_cpu()?;
    t.require_dtype(r.dtype)?;
    if r.shape.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "residual: expected 2-D [tokens, hidden], got shape {:?}",
            r.shape
        )));
    }
    if t.shape.len() != 2 || t.shape[1] != r.shape[1] {
        return Err(PyValueError::new_err(format!(
            "table: expected 2-D [slots, {}], got shape {:?}",
            r.shape[1], t.shape
        )));
    }
    if t.shape[0] == 0 {
        return Err(PyValueError::new_err(
            "table: needs at least the zero row (slot 0)",
        ));
    }
    if s.shape.len() != 1 {
        return Err(PyValueError::new_err(format!(
            "slots: expected 1-D, got shape {:?}",
            s.shape
        )));
    }
    if s.numel() > r.shape[0] {
        return Err(PyValueError::new_err(format!(
            "slots: {} indices for {} tokens",
            s.numel(),
            r.shape[0]
        )));
    }
    require_disjoint(&[&r, &t])?;
    let (s0, s1) = s.byte_range();
    let (r0, r1) = r.range();
    if s0 < r1 && r0 < s1 && s.numel() > 0 {
        return Err(PyValueError::new_err(
            "residual and slots share memory; they must be distinct tensors",
        ));
    }
    let hidden = r.shape[1];
    let (n_res, n_tab, n) = (r.numel(), t.numel(), s.numel());
    let i64s = s.dtype == IndexDType::I64;
    let (rp, tp, sp) = (SendPtr(r.ptr), SendPtr(t.ptr), SendPtr(s.ptr));
    let dtype = r.dtype;
    // Small work: release the GIL anyway so a Python trainer thread is not blocked.
    py.detach(move || by_dtype!(dtype, run(&rp, n_res, hidden, &tp, n_tab, &sp, n, i64s)))
    .map_err(|e| PyValueError::new_err(e.to_string()))
}
