//! Kernel registry: `.cu` sources from the repo's `kernels/` folder, embedded
//! at build time and compiled with NVRTC at run time.
//!
//! Why run-time compilation: the build machine has no CUDA toolkit (and needs
//! none); NVRTC targets the exact device found at run time. Each kernel file is
//! compiled once per (device ordinal, kernel name) and cached process-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::device::{guarded, require_nvrtc};
use crate::{CudaError, Gpu};

/// One `.cu` file: its registry name (the file stem), its source, and the
/// NVRTC options it needs beyond the architecture.
struct KernelSource {
    name: &'static str,
    source: &'static str,
    options: &'static [&'static str],
}

/// IEEE single precision operation for operation, as on the CPU: no fused
/// multiply-add contraction, correctly rounded division and square root,
/// denormals kept. For kernels whose output must equal the CPU's bit for bit.
const IEEE_EXACT: &[&str] = &[
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// Every kernel shipped with plasticity. Paths are relative to this file:
/// `rust/plasticity-cuda/src/` -> repo root -> `kernels/`. A test checks this
/// list against the files in `kernels/`, so a new `.cu` file must be added here.
const KERNELS: &[KernelSource] = &[
    KernelSource {
        name: "steering_add",
        source: include_str!("../../../kernels/steering_add.cu"),
        options: &[],
    },
    KernelSource {
        name: "apollo",
        source: include_str!("../../../kernels/apollo.cu"),
        options: IEEE_EXACT,
    },
];

/// Names of all registered kernel files (e.g. `"steering_add"`).
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    KERNELS.iter().map(|k| k.name)
}

/// The embedded CUDA source of a registered kernel file.
pub fn kernel_source(name: &str) -> Option<&'static str> {
    KERNELS.iter().find(|k| k.name == name).map(|k| k.source)
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    require_nvrtc()?;
    guarded(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: plain out-parameters.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| CudaError::Driver(e.to_string()))?;
        Ok((major, minor))
    })
}

/// The virtual architectures this NVRTC can target, as numbers (90 = compute_90).
fn nvrtc_supported_archs() -> Result<Vec<u32>, CudaError> {
    guarded(|| {
        use cudarc::nvrtc::sys;
        let mut n = 0;
        // SAFETY: query the count, then fill a buffer of exactly that size.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .map_err(|e| CudaError::Driver(e.to_string()))?;
        let mut archs = vec![0; n.max(0) as usize];
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| CudaError::Driver(e.to_string()))?;
        Ok(archs.into_iter().map(|a| a as u32).collect())
    })
}

/// Pick the arch to compile for: the device's own if NVRTC knows it, else the
/// newest older one NVRTC supports (PTX JITs forward onto newer GPUs).
/// Why: a GPU newer than the NVRTC on the machine should still work.
fn pick_arch(cc: (u32, u32)) -> Result<String, CudaError> {
    let want = cc.0 * 10 + cc.1;
    let supported = nvrtc_supported_archs()?;
    let arch = if supported.is_empty() || supported.contains(&want) {
        want
    } else {
        supported
            .iter()
            .copied()
            .filter(|&a| a <= want)
            .max()
            .ok_or_else(|| CudaError::Compile {
                kernel: String::new(),
                log: format!("NVRTC supports {supported:?}, nothing at or below sm_{want}"),
            })?
    };
    if arch != want {
        tracing::warn!(
            device = want,
            using = arch,
            "NVRTC lacks the device arch; using older PTX"
        );
    }
    Ok(format!("compute_{arch}"))
}

/// Compile a registered kernel file to PTX for `arch` (e.g. `"compute_90"`).
///
/// Needs only NVRTC, not a GPU, so it is also how tests check that the
/// kernels compile on machines without a device.
pub fn compile_ptx(name: &str, arch: &str) -> Result<Ptx, CudaError> {
    let entry = KERNELS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| CudaError::UnknownKernel(name.to_string()))?;
    let source = entry.source;
    require_nvrtc()?;
    let mut options = vec![
        // `arch` is a &'static str in cudarc, so pass the flag as a raw option.
        format!("--gpu-architecture={arch}"),
        // Line info costs nothing at run time and makes profilers useful.
        "--generate-line-info".to_string(),
    ];
    options.extend(entry.options.iter().map(|o| o.to_string()));
    let opts = CompileOptions {
        options,
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let start = Instant::now();
    let ptx = guarded(|| {
        cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| compile_error(name, e))
    })?;
    tracing::info!(
        kernel = name,
        arch,
        ms = start.elapsed().as_millis() as u64,
        "NVRTC compiled"
    );
    Ok(ptx)
}

fn compile_error(kernel: &str, e: CompileError) -> CudaError {
    let log = match e {
        CompileError::CompileError {
            nvrtc,
            options,
            log,
        } => {
            format!(
                "{nvrtc:?} with options {options:?}\n{}",
                log.to_string_lossy()
            )
        }
        other => other.to_string(),
    };
    CudaError::Compile {
        kernel: kernel.to_string(),
        log,
    }
}

type ModuleCache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;
type FunctionCache = Mutex<HashMap<(usize, String), CudaFunction>>;

/// Loaded entry points, so a launch on the hot path (the steering add, once per
/// layer per forward) costs a map look-up, not a driver call.
fn functions() -> &'static FunctionCache {
    static CACHE: OnceLock<FunctionCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Process-wide cache of loaded modules. Keyed by ordinal because
/// [`Gpu::open`] always uses the device's primary context, so every `Gpu` on
/// that ordinal can use the same module; the cached module holds an `Arc` to
/// the context, which keeps the context alive for the process.
fn modules() -> &'static ModuleCache {
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl Gpu {
    /// The compiled module for kernel file `name` on this device, compiling and
    /// loading it on first use.
    pub fn kernel(&self, name: &str) -> Result<Arc<CudaModule>, CudaError> {
        let entry = KERNELS
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| CudaError::UnknownKernel(name.to_string()))?;
        let key = (self.ordinal(), entry.name);
        // The lock is held across compilation on purpose: each kernel is then
        // compiled exactly once even when threads race on first use. Failures
        // are not cached, so a later call retries.
        let mut cache = modules().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&key) {
            return Ok(m.clone());
        }
        let arch = pick_arch(self.info().compute_capability)?;
        let ptx = compile_ptx(entry.name, &arch)?;
        let ctx = self.context().clone();
        let module = guarded(|| Ok(ctx.load_module(ptx)?))?;
        cache.insert(key, module.clone());
        Ok(module)
    }

    /// Function `func` (an `extern "C"` entry point) from kernel file `kernel`.
    pub fn function(&self, kernel: &str, func: &str) -> Result<CudaFunction, CudaError> {
        let key = (self.ordinal(), format!("{kernel}/{func}"));
        if let Some(f) = functions()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let module = self.kernel(kernel)?;
        let f = guarded(|| Ok(module.load_function(func)?))?;
        functions()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }
}
