//! Compiles every registered kernel with NVRTC. Needs NVRTC but no GPU, so it
//! also runs on CPU machines that have torch's CUDA 13 wheels in `.venv`.
//! Own test binary on purpose: it preloads NVRTC before anything caches
//! `nvrtc_present()`.

mod common;

use plasticity_cuda::{
    compile_ptx, kernel_names, kernel_source, nvrtc_present, nvrtc_version, CudaError,
};

#[test]
fn registry_lists_steering_add() {
    assert!(kernel_names().any(|n| n == "steering_add"));
    let src = kernel_source("steering_add").unwrap();
    for f in ["steering_add_f32", "steering_add_bf16", "steering_add_f16"] {
        assert!(
            src.contains(&format!("void {f}(")),
            "{f} missing from steering_add.cu"
        );
    }
    assert_eq!(
        compile_ptx("nope", "compute_90").unwrap_err(),
        CudaError::UnknownKernel("nope".into())
    );
}

#[test]
fn kernels_compile_with_nvrtc() {
    common::preload_venv_nvrtc();
    if !nvrtc_present() {
        assert_eq!(
            compile_ptx("steering_add", "compute_90").unwrap_err(),
            CudaError::NvrtcMissing
        );
        println!("skipped: no NVRTC library");
        return;
    }
    println!("NVRTC {:?}", nvrtc_version().unwrap());
    // 75 is the oldest arch CUDA 13 accepts; 90 = H100/H200; 100 = B200.
    for arch in ["compute_75", "compute_90", "compute_100"] {
        for name in kernel_names() {
            let ptx = compile_ptx(name, arch)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_src();
            assert!(
                ptx.contains(&format!(".target sm_{}", &arch[8..])),
                "{arch}: {}",
                &ptx[..300.min(ptx.len())]
            );
            for f in ["steering_add_f32", "steering_add_bf16", "steering_add_f16"] {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{f} not in PTX for {arch}"
                );
            }
        }
    }
    // A bad arch is a Compile error carrying NVRTC's log, not a panic.
    match compile_ptx("steering_add", "compute_1") {
        Err(CudaError::Compile { kernel, .. }) => assert_eq!(kernel, "steering_add"),
        other => panic!("expected Compile error, got {other:?}"),
    }
}
