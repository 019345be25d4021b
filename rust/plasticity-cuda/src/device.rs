//! Finding the CUDA libraries, probing devices, and opening a [`Gpu`].
//!
//! cudarc is built with `dynamic-loading`: libcuda and libnvrtc are dlopen'ed
//! on first use, and cudarc *panics* if they are missing. Every entry point
//! here therefore (1) checks that the library can be loaded before touching
//! cudarc, and (2) runs the cudarc call under `catch_unwind`, so a machine
//! without CUDA always gets a `CudaError`, never a panic.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{result as dres, CudaContext, CudaStream};

use crate::CudaError;

/// Environment variable naming an explicit `libnvrtc.so*` file to load.
pub const NVRTC_LIB_ENV: &str = "PLASTICITY_NVRTC_LIB";

/// Runs a cudarc call, turning a panic (missing library or symbol) into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("non-string panic payload");
            tracing::warn!(%msg, "cudarc panicked; reported as an error");
            Err(CudaError::Driver(format!("cudarc panicked: {msg}")))
        }
    }
}

/// Whether libcuda (the NVIDIA driver library) can be loaded. Cached: the
/// answer cannot change during a process's life in any way we care about.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: only tries to dlopen the candidate names; calls nothing in them.
        let ok = unsafe { cudarc::driver::sys::is_culib_present() };
        tracing::debug!(present = ok, "libcuda probe");
        ok
    })
}

/// Whether libnvrtc can be loaded (needed to compile kernels).
///
/// Why the extra search: pip-installed CUDA 13 (e.g. the NVRTC that ships with
/// torch, `site-packages/nvidia/cu13/lib/libnvrtc.so.13`) is not on the
/// loader's search path. If the plain names fail, we dlopen a full path from
/// `$PLASTICITY_NVRTC_LIB` or a few well-known places and keep it loaded;
/// cudarc's later `dlopen("libnvrtc.so.13")` then finds it by soname.
pub fn nvrtc_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: as for libcuda, only dlopen.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return true;
        }
        for path in nvrtc_candidates() {
            if preload_nvrtc(&path).is_ok() && unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                tracing::info!(path = %path.display(), "loaded NVRTC from explicit path");
                return true;
            }
        }
        tracing::debug!("libnvrtc not found");
        false
    })
}

/// Load NVRTC from an explicit file path and keep it loaded for the life of
/// the process, so that cudarc's by-name lookup (which matches the sonames of
/// already-loaded libraries) finds it.
///
/// Call this before the first use of NVRTC (e.g. from Python with the path of
/// the wheel's `libnvrtc.so.13`) when it lives outside the loader's path.
/// Why the builtins: libnvrtc dlopens `libnvrtc-builtins.so.X.Y` by bare name
/// at compile time and pip wheels carry no RPATH, so we load it first too.
pub fn preload_nvrtc(path: &Path) -> Result<(), CudaError> {
    if let Some(dir) = path.parent() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Skip the `.alt` variants: same sonames, would shadow nothing useful.
                if name.starts_with("libnvrtc-builtins.so") && !name.contains(".alt") {
                    load_forever(&e.path())?;
                }
            }
        }
    }
    load_forever(path)
}

fn load_forever(path: &Path) -> Result<(), CudaError> {
    // SAFETY: loading a library runs its initialisers; these are NVIDIA's own
    // libraries, which is exactly what cudarc would load anyway.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            // Deliberately leaked: unloading would invalidate cudarc's symbols.
            std::mem::forget(lib);
            tracing::debug!(path = %path.display(), "preloaded");
            Ok(())
        }
        Err(e) => Err(CudaError::Driver(format!(
            "cannot load {}: {e}",
            path.display()
        ))),
    }
}

/// Where to look for libnvrtc when the loader's search path has none.
fn nvrtc_candidates() -> Vec<PathBuf> {
    const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(NVRTC_LIB_ENV) {
        out.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(Path::new(&root).join("lib64"));
            dirs.push(Path::new(&root).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    // Python environments: pip wheels put NVRTC under site-packages/nvidia/.
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        let Some(prefix) = std::env::var_os(var) else {
            continue;
        };
        let prefix = PathBuf::from(prefix);
        dirs.push(prefix.join("lib"));
        if let Ok(entries) = std::fs::read_dir(prefix.join("lib")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("python") {
                    let nv = e.path().join("site-packages").join("nvidia");
                    dirs.push(nv.join("cu13").join("lib"));
                    dirs.push(nv.join("cuda_nvrtc").join("lib"));
                }
            }
        }
    }
    for d in dirs {
        for n in NAMES {
            let p = d.join(n);
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

fn require_driver() -> Result<(), CudaError> {
    if driver_present() {
        Ok(())
    } else {
        Err(CudaError::DriverMissing)
    }
}

pub(crate) fn require_nvrtc() -> Result<(), CudaError> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(CudaError::NvrtcMissing)
    }
}

/// Number of CUDA devices; `Err(DriverMissing)` without a driver.
pub fn device_count() -> Result<usize, CudaError> {
    require_driver()?;
    guarded(|| {
        dres::init()?;
        Ok(dres::device::get_count()?.max(0) as usize)
    })
}

/// True when this process can run plasticity's CUDA kernels: the driver and
/// NVRTC load and at least one device is visible. Never panics.
pub fn available() -> bool {
    driver_present() && nvrtc_present() && matches!(device_count(), Ok(n) if n > 0)
}

/// What [`probe`] reports about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100.
    pub compute_capability: (u32, u32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// The NVRTC virtual architecture for this device, e.g. `compute_90`.
    pub fn arch(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("compute_{major}{minor}")
    }
}

/// Describe device 0. See [`probe_device`].
pub fn probe() -> Result<DeviceInfo, CudaError> {
    probe_device(0)
}

/// Describe one device without creating a context (a context costs hundreds
/// of MiB of device memory; probing should not).
pub fn probe_device(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    let count = device_count()?;
    if count == 0 {
        return Err(CudaError::NoDevice);
    }
    if ordinal >= count {
        return Err(CudaError::BadOrdinal { ordinal, count });
    }
    guarded(|| {
        let dev = dres::device::get(ordinal as i32)?;
        let name = dres::device::get_name(dev)?;
        // SAFETY: `dev` is a valid device handle from cuDeviceGet.
        let (major, minor, total_memory) = unsafe {
            (
                dres::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                dres::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
                dres::device::total_mem(dev)?,
            )
        };
        Ok(DeviceInfo {
            ordinal,
            name,
            compute_capability: (major as u32, minor as u32),
            total_memory,
        })
    })
}

/// An opened device: its (primary) context plus a dedicated stream.
///
/// Why a dedicated stream: plasticity trains alongside the host framework's
/// own work, so its launches go on their own non-blocking stream instead of
/// the legacy default stream, which would serialise against everything.
///
/// Cloning is cheap and shares the same context and stream.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Open device `ordinal`: retain its primary context (shared with e.g.
    /// PyTorch in the same process) and create a fresh non-blocking stream.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        let info = probe_device(ordinal)?; // DriverMissing / NoDevice / BadOrdinal
                                           // CudaContext::new panics when libcuda is absent; we checked above,
                                           // and catch_unwind covers anything else (e.g. a missing symbol).
        let (ctx, stream) = guarded(|| {
            let ctx = CudaContext::new(ordinal)?;
            let stream = ctx.new_stream()?;
            Ok((ctx, stream))
        })?;
        tracing::info!(
            ordinal,
            name = %info.name,
            cc = ?info.compute_capability,
            total_mib = info.total_memory >> 20,
            "opened CUDA device"
        );
        Ok(Gpu { ctx, stream, info })
    }

    /// The process-wide `Gpu` of device `ordinal`, opened on first use, for
    /// callers that launch on a stream they own (torch's current stream: see
    /// [`crate::steering_add_borrowed`]). It creates no stream of its own, so
    /// opening it never synchronises the context (a new stream would, the first
    /// time, and that breaks a CUDA-graph capture in progress); its
    /// [`Gpu::stream`] is the context's legacy default stream.
    pub fn shared(ordinal: usize) -> Result<Gpu, CudaError> {
        type Shared = Mutex<HashMap<usize, Gpu>>;
        static SHARED: OnceLock<Shared> = OnceLock::new();
        let mut map = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&ordinal) {
            return Ok(g.clone());
        }
        let info = probe_device(ordinal)?;
        let (ctx, stream) = guarded(|| {
            let ctx = CudaContext::new(ordinal)?;
            let stream = ctx.default_stream();
            Ok((ctx, stream))
        })?;
        tracing::info!(ordinal, name = %info.name, "opened CUDA device for borrowed streams");
        let gpu = Gpu { ctx, stream, info };
        map.insert(ordinal, gpu.clone());
        Ok(gpu)
    }

    /// The device's (primary) context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// This Gpu's own stream; all of this crate's launches go here.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    /// Block until all work queued on this Gpu's stream is done.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }
}
