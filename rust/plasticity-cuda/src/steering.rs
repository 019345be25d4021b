//! Safe wrappers for `kernels/steering_add.cu`:
//! `residual[t, i] += table[slot[t], i]`.
//!
//! The contract is the CPU path's (plasticity-core `steering::add_rows`):
//! slot 0 is "not steered" and its row is never read. The one difference: a
//! slot outside `0..num_slots` cannot be refused by a kernel without a host
//! synchronisation (which would also break CUDA-graph capture), so the kernel
//! leaves that token untouched and never reads outside the table.
//!
//! Two ways in: [`steering_add_f32`] & co. on this crate's own [`CudaSlice`]s
//! and stream, and [`steering_add_borrowed`] on memory and a stream owned by
//! someone else (torch's tensors and its current stream, from the Python
//! binding).

use cudarc::driver::{sys, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::launch::{steering_plan, SteeringPlan};
use crate::{CudaError, Gpu};

const KERNEL: &str = "steering_add";

/// The element type of the residual and the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    BF16,
    F16,
}

impl FloatType {
    pub fn bytes(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::BF16 | FloatType::F16 => 2,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::BF16 => "bf16",
            FloatType::F16 => "f16",
        }
    }
}

/// The integer type of the slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotType {
    I32,
    I64,
}

impl SlotType {
    fn tag(self) -> &'static str {
        match self {
            SlotType::I32 => "i32",
            SlotType::I64 => "i64",
        }
    }
}

/// The kernel entry point for one (element type, slot type, plan).
pub fn steering_entry(float: FloatType, slot: SlotType, plan: &SteeringPlan) -> String {
    format!(
        "steering_add_{}_{}{}",
        float.tag(),
        slot.tag(),
        if plan.vectorised { "_v16" } else { "" }
    )
}

/// Every entry point `steering_add.cu` must define.
pub fn steering_entries() -> Vec<String> {
    let mut out = Vec::new();
    for f in [FloatType::F32, FloatType::BF16, FloatType::F16] {
        for s in [SlotType::I32, SlotType::I64] {
            for v in ["", "_v16"] {
                out.push(format!("steering_add_{}_{}{v}", f.tag(), s.tag()));
            }
        }
    }
    out
}

/// Device memory owned elsewhere (torch), by address: what a steering add reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct BorrowedSteering {
    /// `[num_tokens, hidden]` row-major, written in place.
    pub residual: u64,
    /// `[num_slots, hidden]` row-major.
    pub table: u64,
    /// `[num_tokens]` slot indices.
    pub slot: u64,
    pub num_tokens: usize,
    pub hidden: usize,
    pub num_slots: usize,
    pub float: FloatType,
    pub slot_type: SlotType,
}

/// Whether `stream` (a raw `CUstream`; 0 is the legacy default stream) belongs
/// to `gpu`'s context. Binds that context to the calling thread first, which is
/// what the null and per-thread streams resolve against.
pub fn stream_on(gpu: &Gpu, stream: usize) -> Result<bool, CudaError> {
    let ctx = gpu.context();
    crate::device::guarded(|| {
        ctx.bind_to_thread()?;
        let mut owner: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: an out-parameter; `stream` is a handle the caller vouches for (see
        // steering_add_borrowed), and the null/per-thread handles are always valid.
        unsafe { sys::cuStreamGetCtx(stream as sys::CUstream, &mut owner) }
            .result()
            .map_err(|e| CudaError::Driver(format!("stream {stream:#x}: {e}")))?;
        Ok(owner == ctx.cu_ctx())
    })
}

/// `residual[t] += table[slot[t]]` on memory and a stream that someone else owns.
///
/// Refuses a stream of another device's context; launches nothing for zero
/// tokens; never synchronises, allocates or copies, so it can be captured in a
/// CUDA graph once the kernel is loaded (load it first with
/// [`Gpu::kernel`]`("steering_add")`: a module load inside a capture fails).
///
/// # Safety
/// - `stream` is a live `CUstream` handle (or 0 / the per-thread handle 2);
/// - the three addresses point into allocations on `gpu`'s device holding at
///   least `num_tokens * hidden`, `num_slots * hidden` and `num_tokens`
///   elements of the stated types, alive until the stream has run the kernel;
/// - no other work writes them meanwhile except in stream order.
pub unsafe fn steering_add_borrowed(
    gpu: &Gpu,
    stream: usize,
    b: &BorrowedSteering,
) -> Result<(), CudaError> {
    let Some(plan) = steering_plan(
        b.num_tokens,
        b.hidden,
        b.num_slots,
        b.float.bytes(),
        b.residual,
        b.table,
    )?
    else {
        return Ok(());
    };
    if !stream_on(gpu, stream)? {
        return Err(CudaError::InvalidArgument(format!(
            "stream {stream:#x} belongs to another device's context, not cuda:{}",
            gpu.ordinal()
        )));
    }
    let f = gpu.function(KERNEL, &steering_entry(b.float, b.slot_type, &plan))?;
    let ints = (b.num_tokens as i32, b.hidden as i32, b.num_slots as i32);
    let ctx = gpu.context().clone();
    crate::device::guarded(|| {
        // SAFETY: the caller vouches for the handle (above); dropping the wrapper
        // does not destroy the stream.
        let s = unsafe { ctx.wrap_borrowed_stream(stream as sys::CUstream) };
        let mut args = s.launch_builder(&f);
        args.arg(&b.residual)
            .arg(&b.table)
            .arg(&b.slot)
            .arg(&ints.0)
            .arg(&ints.1)
            .arg(&ints.2);
        // SAFETY: (ELEM*, const ELEM*, const IDX*, int, int, int) in this order, the
        // pointers passed by value as 64-bit addresses; sizes are the caller's contract.
        unsafe { args.launch(config(&plan)) }?;
        Ok(())
    })
}

fn config(plan: &SteeringPlan) -> LaunchConfig {
    LaunchConfig {
        grid_dim: plan.shape.grid,
        block_dim: plan.shape.block,
        shared_mem_bytes: 0,
    }
}

/// Defines one public per-dtype wrapper around [`launch`]; the wrappers differ
/// only in element type and kernel entry point.
macro_rules! steering_add_fn {
    ($(#[$doc:meta])* $name:ident, $elem:ty, $float:expr) => {
        $(#[$doc])*
        pub fn $name(
            gpu: &Gpu,
            residual: &mut CudaSlice<$elem>,
            table: &CudaSlice<$elem>,
            slot: &CudaSlice<i32>,
            num_tokens: usize,
            hidden: usize,
        ) -> Result<(), CudaError> {
            launch(gpu, $float, residual, table, slot, num_tokens, hidden)
        }
    };
}

steering_add_fn!(
    /// `residual[t*hidden + i] += table[slot[t]*hidden + i]` in f32, on `gpu`'s stream.
    steering_add_f32,
    f32,
    FloatType::F32
);

steering_add_fn!(
    /// bf16 version. Buffers hold raw bf16 bit patterns (`half::bf16::to_bits`);
    /// the sum is formed in f32 and rounded to nearest-even once.
    steering_add_bf16,
    u16,
    FloatType::BF16
);

steering_add_fn!(
    /// f16 (IEEE half) version. Buffers hold raw f16 bit patterns
    /// (`half::f16::to_bits`); the sum is formed in f32 and rounded once.
    steering_add_f16,
    u16,
    FloatType::F16
);

fn invalid(msg: String) -> CudaError {
    CudaError::InvalidArgument(msg)
}

fn launch<T: DeviceRepr>(
    gpu: &Gpu,
    float: FloatType,
    residual: &mut CudaSlice<T>,
    table: &CudaSlice<T>,
    slot: &CudaSlice<i32>,
    num_tokens: usize,
    hidden: usize,
) -> Result<(), CudaError> {
    // Shape checks: with the kernel's own slot bounds, these make the launch memory-safe.
    if hidden == 0 {
        return Err(invalid("hidden must be > 0".into()));
    }
    let total = num_tokens
        .checked_mul(hidden)
        .ok_or_else(|| invalid("num_tokens * hidden overflows".into()))?;
    if residual.len() != total {
        return Err(invalid(format!(
            "residual has {} elements, expected num_tokens*hidden = {total}",
            residual.len()
        )));
    }
    if slot.len() != num_tokens {
        return Err(invalid(format!(
            "slot has {} elements, expected {num_tokens}",
            slot.len()
        )));
    }
    if table.is_empty() || table.len() % hidden != 0 {
        return Err(invalid(format!(
            "table has {} elements, expected a non-zero multiple of hidden = {hidden}",
            table.len()
        )));
    }
    for (what, ord) in [
        ("residual", residual.ordinal()),
        ("table", table.ordinal()),
        ("slot", slot.ordinal()),
    ] {
        if ord != gpu.ordinal() {
            return Err(invalid(format!(
                "{what} lives on device {ord}, Gpu is device {}",
                gpu.ordinal()
            )));
        }
    }
    let num_slots = table.len() / hidden;
    // Addresses decide the vector width; cudarc's allocations are 256-byte aligned.
    let stream = gpu.stream();
    let (r_addr, t_addr) = {
        use cudarc::driver::DevicePtr;
        let (r, _r) = residual.device_ptr(stream);
        let (t, _t) = table.device_ptr(stream);
        (r, t)
    };
    let Some(plan) = steering_plan(num_tokens, hidden, num_slots, float.bytes(), r_addr, t_addr)?
    else {
        return Ok(());
    };
    let f = gpu.function(KERNEL, &steering_entry(float, SlotType::I32, &plan))?;
    let ints = (num_tokens as i32, hidden as i32, num_slots as i32);
    let mut args = stream.launch_builder(&f);
    args.arg(residual)
        .arg(table)
        .arg(slot)
        .arg(&ints.0)
        .arg(&ints.1)
        .arg(&ints.2);
    // SAFETY: argument types and order match the kernel's C signature
    // (T*, const T*, const int*, int, int, int), with T = float or unsigned short;
    // buffer lengths were checked against num_tokens/hidden above, and the kernel
    // bounds slot values by num_slots itself.
    unsafe { args.launch(config(&plan)) }?;
    Ok(())
}
