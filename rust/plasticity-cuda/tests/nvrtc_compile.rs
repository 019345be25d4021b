//! Compiles every kernel in `kernels/` with NVRTC. Needs NVRTC but no GPU, so it
//! runs on CPU machines too: scripts/test.sh installs NVRTC from PyPI into a side
//! folder, points PLASTICITY_NVRTC_LIB at it and sets PLASTICITY_REQUIRE_NVRTC=1,
//! under which a missing NVRTC fails this test instead of skipping it.
//! Own test binary on purpose: it preloads NVRTC before anything caches
//! `nvrtc_present()`.

mod common;

use std::collections::BTreeSet;

use plasticity_cuda::{
    compile_ptx, kernel_names, kernel_source, nvrtc_present, nvrtc_version, steering_entries,
    CudaError,
};

/// The entry points each kernel file must export.
fn entries(kernel: &str) -> Vec<String> {
    match kernel {
        "steering_add" => steering_entries(),
        "apollo" => plasticity_cuda::apollo::apollo_entries(),
        other => panic!("kernel {other:?} has no expected entry points listed in this test"),
    }
}

#[test]
fn registry_is_the_kernels_folder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".cu").map(str::to_string)
        })
        .collect();
    let registered: BTreeSet<String> = kernel_names().map(str::to_string).collect();
    assert_eq!(
        on_disk, registered,
        "every kernels/*.cu must be registered in plasticity-cuda's kernels.rs, and only those"
    );
    for name in kernel_names() {
        let src = kernel_source(name).unwrap();
        let disk = std::fs::read_to_string(dir.join(format!("{name}.cu"))).unwrap();
        assert_eq!(src, disk, "{name}: embedded source is stale");
        assert!(
            !src.lines().any(|l| l.trim_start().starts_with("#include")),
            "{name}: kernels must not #include"
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
        assert!(
            std::env::var_os("PLASTICITY_REQUIRE_NVRTC").is_none(),
            "PLASTICITY_REQUIRE_NVRTC is set but no NVRTC loads (PLASTICITY_NVRTC_LIB = {:?})",
            std::env::var_os("PLASTICITY_NVRTC_LIB")
        );
        println!("skipped: no NVRTC library");
        return;
    }
    println!("NVRTC {:?}", nvrtc_version().unwrap());
    // 75 is the oldest arch CUDA 13 accepts; 90 = H100/H200; 100 = B200.
    let start = std::time::Instant::now();
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
            for f in entries(name) {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{f} not in PTX of {name} for {arch}"
                );
            }
        }
    }
    println!(
        "compiled {} kernel files for 3 archs in {:?}",
        kernel_names().count(),
        start.elapsed()
    );
    // The IEEE-exact kernel really is compiled without contraction: no fma.rn.f32
    // in the projection (a contracted a*b+c would round once where the CPU rounds twice).
    let ptx = compile_ptx("apollo", "compute_90").unwrap().to_src();
    assert!(
        ptx.contains("mul.rn.f32") || ptx.contains("mul.f32"),
        "no f32 multiply?"
    );
    assert!(!ptx.contains("fma.rn.f32"), "apollo was contracted to FMA");
    // NVRTC takes the device branch of steering_add.cu (__CUDACC_RTC__): hardware f16 conversions,
    // not the host test's bit manipulation.
    let ptx = compile_ptx("steering_add", "compute_90").unwrap().to_src();
    assert!(
        ptx.contains("cvt.rn.f16.f32"),
        "steering_add's f16 store is not the hardware conversion"
    );
    // A bad arch is a Compile error carrying NVRTC's log, not a panic.
    match compile_ptx("steering_add", "compute_1") {
        Err(CudaError::Compile { kernel, .. }) => assert_eq!(kernel, "steering_add"),
        other => panic!("expected Compile error, got {other:?}"),
    }
}
