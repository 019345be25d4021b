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

/// Preload NVRTC before anything caches `nvrtc_present()`: the file named by
/// `$PLASTICITY_NVRTC_LIB` when set (scripts/test.sh's side install, the GPU
/// host's torch wheel), else the venv's. A named file that does not load fails
/// the test under PLASTICITY_REQUIRE_NVRTC=1.
pub fn preload_venv_nvrtc() {
    let named = std::env::var_os(plasticity_cuda::NVRTC_LIB_ENV).map(PathBuf::from);
    let Some(p) = named.clone().or_else(venv_nvrtc) else {
        return;
    };
    match plasticity_cuda::preload_nvrtc(&p) {
        Ok(()) => println!("NVRTC preloaded from {}", p.display()),
        Err(e) => {
            assert!(
                named.is_none() || std::env::var_os("PLASTICITY_REQUIRE_NVRTC").is_none(),
                "PLASTICITY_REQUIRE_NVRTC: cannot load {}: {e}",
                p.display()
            );
            println!("could not preload {}: {e}", p.display());
        }
    }
}
