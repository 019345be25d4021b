//! Safe wrappers for `kernels/steering_add.cu`:
//! `residual[t, i] += table[slot[t], i]`.
//!
//! Contract on `slot`: every value must be in `0..num_slots`, where
//! `num_slots = table.len() / hidden` (slot 0 = the zero row, "no steering").
//! The kernel does not bounds-check slots. With `debug_assertions` on (debug
//! and `cargo test` builds) the wrapper copies `slot` to the host and checks
//! it, returning `InvalidArgument`; release builds skip that copy (it would
//! synchronise the stream on every call) and trust the caller.

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::{CudaError, Gpu};

const KERNEL: &str = "steering_add";
const BLOCK: u32 = 256;
/// The kernel is grid-stride, so capping the grid only bounds launch size.
const MAX_BLOCKS: u64 = 1 << 16;

/// Defines one public per-dtype wrapper around [`launch`]; the wrappers differ
/// only in element type and kernel entry point.
macro_rules! steering_add_fn {
    ($(#[$doc:meta])* $name:ident, $elem:ty) => {
        $(#[$doc])*
        pub fn $name(
            gpu: &Gpu,
            residual: &mut CudaSlice<$elem>,
            table: &CudaSlice<$elem>,
            slot: &CudaSlice<i32>,
            num_tokens: usize,
            hidden: usize,
        ) -> Result<(), CudaError> {
            launch(gpu, stringify!($name), residual, table, slot, num_tokens, hidden)
        }
    };
}

steering_add_fn!(
    /// `residual[t*hidden + i] += table[slot[t]*hidden + i]` in f32, on `gpu`'s stream.
    steering_add_f32,
    f32
);

steering_add_fn!(
    /// bf16 version. Buffers hold raw bf16 bit patterns (`half::bf16::to_bits`);
    /// the sum is formed in f32 and rounded to nearest-even once.
    steering_add_bf16,
    u16
);

steering_add_fn!(
    /// f16 (IEEE half) version. Buffers hold raw f16 bit patterns
    /// (`half::f16::to_bits`); the sum is formed in f32 and rounded once.
    steering_add_f16,
    u16
);

fn invalid(msg: String) -> CudaError {
    CudaError::InvalidArgument(msg)
}

fn launch<T: DeviceRepr>(
    gpu: &Gpu,
    func: &str,
    residual: &mut CudaSlice<T>,
    table: &CudaSlice<T>,
    slot: &CudaSlice<i32>,
    num_tokens: usize,
    hidden: usize,
) -> Result<(), CudaError> {
    // Shape checks: these are what make the launch memory-safe (apart from
    // slot values, see the module docs).
    if hidden == 0 {
        return Err(invalid("hidden must be > 0".into()));
    }
    let n_i32 = i32::try_from(num_tokens)
        .map_err(|_| invalid(format!("num_tokens {num_tokens} > i32::MAX")))?;
    let h_i32 =
        i32::try_from(hidden).map_err(|_| invalid(format!("hidden {hidden} > i32::MAX")))?;
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
    if num_tokens == 0 {
        return Ok(());
    }
    if cfg!(debug_assertions) {
        let num_slots = table.len() / hidden;
        let host = gpu.stream().clone_dtoh(slot)?;
        if let Some((t, s)) = host
            .iter()
            .enumerate()
            .find(|(_, &s)| s < 0 || s as usize >= num_slots)
        {
            return Err(invalid(format!(
                "slot[{t}] = {s} out of range 0..{num_slots}"
            )));
        }
    }

    let f = gpu.function(KERNEL, func)?;
    let blocks = (total as u64).div_ceil(BLOCK as u64).clamp(1, MAX_BLOCKS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(residual)
        .arg(table)
        .arg(slot)
        .arg(&n_i32)
        .arg(&h_i32);
    // SAFETY: argument types and order match the kernel's C signature
    // (T*, const T*, const int*, int, int), with T = float or unsigned short;
    // buffer lengths were checked against num_tokens/hidden above; slot values
    // are the caller's contract (checked above in debug builds).
    unsafe { args.launch(cfg) }?;
    Ok(())
}
