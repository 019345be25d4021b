//! Test helpers shared by the integration tests.

use std::path::PathBuf;

/// libnvrtc.so.13 from the repo's .venv (pip `nvidia-cuda-nvrtc`, pulled in
/// by torch cu13), if any. It is not on the loader path, so tests preload it.
pub fn venv_nvrtc() -> Option<PathBuf> {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let p = e
            .path()
            .join("site-packages/nvidia/cu13/lib/libnvrtc.so.13");
        p.is_file().then_some(p)
    })
}

/// Preload the venv's NVRTC (if present) before anything caches `nvrtc_present()`.
pub fn preload_venv_nvrtc() {
    if let Some(p) = venv_nvrtc() {
        if let Err(e) = plasticity_cuda::preload_nvrtc(&p) {
            println!("could not preload {}: {e}", p.display());
        }
    }
}
