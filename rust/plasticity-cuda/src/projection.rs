//! Apollo's Gaussian projection on the device, from `kernels/apollo.cu`.
//!
//! The device stream is plasticity-core's `rng` stream bit for bit (the kernel
//! is compiled IEEE-exact, see `kernels.rs`), so a CPU step and a GPU step with
//! the same seed project with the same matrix and can be compared directly.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::launch::fill_normal_shape;
use crate::{CudaError, Gpu};

/// `out[i] = std * element (start + i)` of normal stream `seed`, on `gpu`'s stream.
pub fn fill_normal(
    gpu: &Gpu,
    seed: u64,
    std: f32,
    start: u64,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let len = out.len() as u64;
    let Some(shape) = fill_normal_shape(start, len)? else {
        return Ok(());
    };
    if out.ordinal() != gpu.ordinal() {
        return Err(CudaError::InvalidArgument(format!(
            "out lives on device {}, Gpu is device {}",
            out.ordinal(),
            gpu.ordinal()
        )));
    }
    let f = gpu.function("apollo", "apollo_fill_normal")?;
    let stream = gpu.stream();
    let mut args = stream.launch_builder(&f);
    args.arg(out).arg(&seed).arg(&std).arg(&start).arg(&len);
    let cfg = LaunchConfig {
        grid_dim: shape.grid,
        block_dim: shape.block,
        shared_mem_bytes: 0,
    };
    // SAFETY: (float*, unsigned long long, float, unsigned long long, unsigned long long)
    // as in the kernel; the kernel writes out[0..len) only, and len is out's length.
    unsafe { args.launch(cfg) }?;
    Ok(())
}

/// The device twin of `plasticity_core::apollo::generate_projection`: P (r×d,
/// i.i.d. N(0, 1/r)) of matrix seed `seed` for refresh period `period`.
pub fn generate_projection(
    gpu: &Gpu,
    seed: u64,
    period: u64,
    rank: usize,
    d: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (seed, std) = plasticity_core::apollo::projection_stream(seed, period, rank);
    let want = rank.checked_mul(d);
    if want != Some(out.len()) {
        return Err(CudaError::InvalidArgument(format!(
            "projection buffer has {} elements, expected rank*d = {rank}*{d}",
            out.len()
        )));
    }
    fill_normal(gpu, seed, std, 0, out)
}
