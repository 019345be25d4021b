//! The device projection's arithmetic, run on the host: `kernels/apollo.cu`
//! compiled by the system C++ compiler (no FMA contraction, as NVRTC compiles it
//! with --fmad=false) and run thread by thread must give plasticity-core's normal
//! stream bit for bit. With this, a GPU run only has to show the device rounds
//! like IEEE f32 (tests/gpu/projection.rs does, on a GPU).
//!
//! Needs `c++` (g++ or clang++). Without one the test says so and passes, unless
//! PLASTICITY_REQUIRE_CXX=1 (scripts/test.sh sets it): then it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use plasticity_core::apollo::{generate_projection, projection_stream};
use plasticity_core::rng::fill_normal_from;
use plasticity_cuda::launch::fill_normal_shape;

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    Command::new(&cxx)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| cxx)
}

/// The host build of the kernel, compiled once per test binary.
fn harness() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let Some(cxx) = compiler() else {
            assert!(
                std::env::var_os("PLASTICITY_REQUIRE_CXX").is_none(),
                "PLASTICITY_REQUIRE_CXX is set but no C++ compiler runs (CXX or c++)"
            );
            println!(
                "skipped: no C++ compiler (set CXX) to run the kernel's arithmetic on the host"
            );
            return None;
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let kernel = root.join("../../kernels/apollo.cu").canonicalize().unwrap();
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apollo_on_host");
        let out = Command::new(&cxx)
            .args([
                "-std=c++17",
                "-O2",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-o",
            ])
            .arg(&bin)
            .arg(format!("-DPLASTICITY_KERNEL=\"{}\"", kernel.display()))
            .arg(root.join("tests/host/run_on_host.cpp"))
            .output()
            .expect("run the C++ compiler");
        assert!(
            out.status.success(),
            "{cxx} failed on apollo.cu:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(bin)
    })
    .as_deref()
}

/// The kernel's output for elements start..start+len on a grid x block launch.
fn on_host(
    bin: &Path,
    seed: u64,
    std: f32,
    start: u64,
    len: u64,
    grid: u32,
    block: u32,
) -> Vec<f32> {
    let out = Command::new(bin)
        .args([
            seed.to_string(),
            std.to_bits().to_string(),
            start.to_string(),
            len.to_string(),
            grid.to_string(),
            block.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, 4 * len);
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i}: kernel {:e} ({:#x}) vs core {:e} ({:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn kernel_arithmetic_is_the_core_stream_bit_for_bit() {
    let Some(bin) = harness() else { return };
    // Odd and even starts and ends; one run of a million values for coverage of u1, u2.
    for (seed, std, start, len) in [
        (0u64, 1.0f32, 0u64, 1u64),
        (42, 1.0, 1, 1),
        (42, 0.5, 37, 1000),
        (u64::MAX, 0.0625, 12_345, 4097),
        (0x5eed_5eed, 1.0, 0, 1 << 20),
    ] {
        let mut want = vec![0f32; len as usize];
        fill_normal_from(seed, std, start as usize, &mut want);
        let shape = fill_normal_shape(start, len).unwrap().unwrap();
        let got = on_host(bin, seed, std, start, len, shape.grid.0, shape.block.0);
        assert_bits_equal(&format!("seed {seed} start {start} len {len}"), &got, &want);
        // A grid far smaller than the work: the grid-stride loop must still cover it.
        if len > 64 {
            let got = on_host(bin, seed, std, start, len, 2, 32);
            assert_bits_equal(
                &format!("seed {seed} start {start} len {len}, 2x32 grid"),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn kernel_makes_the_cpu_projection_from_the_same_seed_and_period() {
    let Some(bin) = harness() else { return };
    // Apollo's shapes: P is rank x d; periods 0 and 3 (the 4th refresh) differ.
    for (seed, period, rank, d) in [
        (7u64, 0u64, 8usize, 48usize),
        (7, 3, 8, 48),
        (123, 1, 64, 576),
        (9, 0, 1, 4096),
    ] {
        let mut want = vec![0f32; rank * d];
        generate_projection(seed, period, rank, d, &mut want);
        let (stream, std) = projection_stream(seed, period, rank);
        let shape = fill_normal_shape(0, (rank * d) as u64).unwrap().unwrap();
        let got = on_host(
            bin,
            stream,
            std,
            0,
            (rank * d) as u64,
            shape.grid.0,
            shape.block.0,
        );
        assert_bits_equal(
            &format!("P of seed {seed} period {period} r{rank} d{d}"),
            &got,
            &want,
        );
    }
    // The test can fail: another period's P is a different matrix.
    let (stream, std) = projection_stream(7, 1, 8);
    let other = on_host(bin, stream, std, 0, 8 * 48, 2, 256);
    let mut p0 = vec![0f32; 8 * 48];
    generate_projection(7, 0, 8, 48, &mut p0);
    assert_ne!(other, p0);
}
