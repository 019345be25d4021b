//! `plasticity._plasticity`: the thin PyO3 layer over plasticity-core.
//!
//! Everything here borrows torch tensors zero-copy (see `tensor`; safetensors
//! file I/O takes Python buffers, see `safetensors_file`), checks them,
//! releases the GIL and calls the core. Python-side conveniences live in
//! `python/plasticity/`.

/// `by_dtype!(dtype, f(args..))` calls `f::<T>(args..)` with `T` the Rust element type of a
/// weight's dtype: the one place the three weight dtypes are matched to their types.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            plasticity_core::DType::F32 => $f::<f32>($($arg),*),
            plasticity_core::DType::BF16 => $f::<half::bf16>($($arg),*),
            plasticity_core::DType::F16 => $f::<half::f16>($($arg),*),
        }
    };
}

mod apollo;
mod apollo_cuda;
mod apollo_sharded;
mod cuda;
mod lowrank;
mod merge;
mod safetensors_file;
mod steering;
mod tensor;

use pyo3::prelude::*;

#[pymodule]
fn _plasticity(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<apollo::Workspace>()?;
    m.add_class::<apollo_cuda::CudaApollo>()?;
    m.add_function(wrap_pyfunction!(apollo::apollo_step, m)?)?;
    m.add_function(wrap_pyfunction!(apollo::adamw_step, m)?)?;
    m.add_function(wrap_pyfunction!(apollo_sharded::apollo_step_sharded, m)?)?;
    m.add_function(wrap_pyfunction!(
        apollo_sharded::apollo_shard_reduced_bytes,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(apollo::fill_projection, m)?)?;
    m.add_function(wrap_pyfunction!(apollo::bf16_projection_available, m)?)?;
    m.add_function(wrap_pyfunction!(steering::steering_add_, m)?)?;
    m.add_function(wrap_pyfunction!(cuda::cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda::cuda_status, m)?)?;
    m.add_function(wrap_pyfunction!(cuda::cuda_preload_nvrtc, m)?)?;
    m.add_function(wrap_pyfunction!(cuda::cuda_load_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_delta_of, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_add_delta_, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_task_arithmetic, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_ties, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_pair_stats, m)?)?;
    m.add_function(wrap_pyfunction!(lowrank::lowrank_factors, m)?)?;
    m.add_class::<merge::TvGlobalSelect>()?;
    m.add_function(wrap_pyfunction!(merge::tv_paper_keep_count, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_paper_sign_sum, m)?)?;
    m.add_function(wrap_pyfunction!(merge::tv_ties_paper, m)?)?;
    m.add(
        "ST_MAX_HEADER_BYTES",
        plasticity_core::safetensors_file::MAX_HEADER_BYTES,
    )?;
    m.add_function(wrap_pyfunction!(safetensors_file::st_read_header, m)?)?;
    m.add_function(wrap_pyfunction!(safetensors_file::st_dtypes, m)?)?;
    m.add_class::<safetensors_file::SafetensorsFileReader>()?;
    m.add_class::<safetensors_file::SafetensorsFileWriter>()?;
    Ok(())
}
