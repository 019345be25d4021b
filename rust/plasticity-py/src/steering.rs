//! Python binding of the steering addition: `residual[t] += table[slots[t]]`,
//! in place, on CPU tensors (plasticity-core) or on CUDA tensors
//! (plasticity-cuda's kernel, on the stream the caller names: torch's current
//! stream). The same checks hold on both devices.

use plasticity_core::{steering, DType, Element};
use plasticity_cuda::{BorrowedSteering, FloatType, SlotType};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cuda::{cuda_err, parse_stream};
use crate::tensor::{require_disjoint, Device, IndexDType, IndexView, SendPtr, TensorView};

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

/// The one device all three tensors live on, or an error naming where each is.
fn common_device(r: &TensorView, t: &TensorView, s: &IndexView) -> PyResult<Device> {
    if r.device != t.device || r.device != s.device {
        return Err(PyValueError::new_err(format!(
            "residual, table and slots must be on one device: residual is on {}, table on {}, slots on {}",
            r.device, t.device, s.device
        )));
    }
    Ok(r.device)
}

/// `residual[t, :] += table[slots[t], :]` for `t < len(slots)`, in place.
///
/// residual: [tokens, hidden] float32/bfloat16/float16, contiguous.
/// table: [num_slots, hidden], same dtype; row 0 is "not steered" and never read.
/// slots: [n] int32/int64 with n ≤ tokens and every value in 0..num_slots.
/// All three on the CPU, or all three on one CUDA device; then `stream` (an
/// int, torch's current stream's `cuda_stream`) is the stream the kernel is
/// queued on, and nothing synchronises (so it can be captured in a CUDA graph).
/// Everything is checked before the first write. On the CPU a slot outside the
/// table is an error; on CUDA it cannot be checked without a host sync, so the
/// kernel leaves that token untouched and reads nothing outside the table.
#[pyfunction]
#[pyo3(signature = (residual, table, slots, stream = None))]
pub fn steering_add_(
    py: Python<'_>,
    residual: &Bound<'_, PyAny>,
    table: &Bound<'_, PyAny>,
    slots: &Bound<'_, PyAny>,
    stream: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let r = TensorView::new(residual, "residual")?;
    let t = TensorView::new(table, "table")?;
    let s = IndexView::new(slots, "slots")?;
    let device = common_device(&r, &t, &s)?;
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
    let i64s = s.dtype == IndexDType::I64;
    match device {
        Device::Cpu => {
            if stream.is_some() {
                return Err(PyValueError::new_err(
                    "stream: given for CPU tensors; it names the CUDA stream of CUDA tensors",
                ));
            }
            let (n_res, n_tab, n) = (r.numel(), t.numel(), s.numel());
            let (rp, tp, sp) = (SendPtr(r.ptr), SendPtr(t.ptr), SendPtr(s.ptr));
            let dtype = r.dtype;
            // Small work: release the GIL anyway so a Python trainer thread is not blocked.
            py.detach(move || by_dtype!(dtype, run(&rp, n_res, hidden, &tp, n_tab, &sp, n, i64s)))
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }
        Device::Cuda(ordinal) => {
            let stream = stream.ok_or_else(|| {
                PyValueError::new_err(
                    "stream: CUDA tensors need the stream to queue on (stream=torch.cuda.current_stream().cuda_stream)",
                )
            })?;
            let stream = parse_stream(stream)?;
            let ordinal = usize::try_from(ordinal).map_err(|_| {
                PyValueError::new_err(format!("residual: bad CUDA ordinal {ordinal}"))
            })?;
            let b = BorrowedSteering {
                residual: r.ptr as u64,
                table: t.ptr as u64,
                slot: s.ptr as u64,
                num_tokens: s.numel(),
                hidden,
                num_slots: t.shape[0],
                float: match r.dtype {
                    DType::F32 => FloatType::F32,
                    DType::BF16 => FloatType::BF16,
                    DType::F16 => FloatType::F16,
                },
                slot_type: if i64s { SlotType::I64 } else { SlotType::I32 },
            };
            let gpu = crate::cuda::gpu(ordinal)?;
            // SAFETY: the three views were checked above (dtype, shape, contiguity,
            // one device, no overlap) and torch keeps the memory alive in stream order;
            // the stream handle comes from torch (its type and device are checked).
            py.detach(move || unsafe { plasticity_cuda::steering_add_borrowed(&gpu, stream, &b) })
                .map_err(cuda_err)
        }
        Device::Other(d) => Err(PyValueError::new_err(format!(
            "residual: unsupported device type {d}"
        ))),
    }
}
