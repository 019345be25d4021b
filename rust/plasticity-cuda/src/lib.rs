//! plasticity's CUDA layer: find the driver, open a device with its own
//! stream, and run NVRTC-compiled kernels from the repo's `kernels/` folder.
//!
//! Built on cudarc with dynamic loading, so this crate compiles and links on
//! machines without CUDA; there, every entry point returns
//! [`CudaError::DriverMissing`] (or [`CudaError::NvrtcMissing`]) instead of
//! panicking. Check [`available`] before choosing the GPU path.

pub mod apollo;
mod device;
mod error;
mod kernels;
pub mod launch;
mod projection;
mod steering;

pub use device::{
    available, device_count, driver_present, nvrtc_present, preload_nvrtc, probe, probe_device,
    DeviceInfo, Gpu, NVRTC_LIB_ENV,
};
pub use error::CudaError;
pub use kernels::{compile_ptx, kernel_names, kernel_source, nvrtc_version};
pub use projection::{fill_normal, generate_projection};
pub use steering::{
    steering_add_bf16, steering_add_borrowed, steering_add_f16, steering_add_f32, steering_entries,
    steering_entry, stream_on, BorrowedSteering, FloatType, SlotType,
};

/// Re-exported so callers use the exact cudarc version this crate was built
/// against (`CudaSlice`, `CudaStream`, ...).
pub use cudarc;
pub use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
