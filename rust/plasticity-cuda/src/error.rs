//! The one error type of this crate.

/// Everything that can go wrong talking to CUDA.
///
/// Why an enum rather than passing cudarc's errors through: callers (the
/// Python binding, training code) need to tell "this machine has no GPU"
/// (fall back to CPU, skip tests) apart from "the GPU misbehaved" (a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` (the driver library) could not be loaded: no NVIDIA driver.
    #[error("CUDA driver library (libcuda) not found")]
    DriverMissing,
    /// `libnvrtc` could not be loaded, so kernels cannot be compiled.
    #[error("NVRTC library (libnvrtc) not found; set PLASTICITY_NVRTC_LIB or LD_LIBRARY_PATH")]
    NvrtcMissing,
    /// The driver loaded but reports no usable device.
    #[error("no CUDA device found")]
    NoDevice,
    /// A device ordinal past the number of devices.
    #[error("CUDA device {ordinal} requested but only {count} present")]
    BadOrdinal { ordinal: usize, count: usize },
    /// Any other driver API failure (message from cudarc / the driver).
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// A kernel that is not in the registry.
    #[error("unknown kernel {0:?}")]
    UnknownKernel(String),
    /// NVRTC rejected a kernel source; `log` is NVRTC's program log.
    #[error("NVRTC failed to compile kernel {kernel:?}:\n{log}")]
    Compile { kernel: String, log: String },
    /// Caller passed buffers whose sizes do not match the launch shape.
    #[error("invalid arguments: {0}")]
    InvalidArgument(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        use cudarc::driver::sys::CUresult;
        match e.0 {
            // cuInit reports "no device" this way (e.g. CUDA_VISIBLE_DEVICES="").
            CUresult::CUDA_ERROR_NO_DEVICE => CudaError::NoDevice,
            _ => CudaError::Driver(e.to_string()),
        }
    }
}
