//! Apollo's projection generated on a GPU equals plasticity-core's, bit for bit.
//! Skips without CUDA (tests/host_reference/projection.rs checks the same
//! arithmetic on the host).

use crate::common;

use plasticity_core::apollo::generate_projection as cpu_projection;
use plasticity_cuda::{available, generate_projection, Gpu};

#[test]
fn device_projection_is_the_cpu_projection() {
    common::preload_venv_nvrtc();
    if !available() {
        println!("skipped: no CUDA device with NVRTC");
        return;
    }
    let gpu = Gpu::open(0).unwrap();
    let s = gpu.stream();
    // Apollo shapes of the anchors (r256 x 4096, r256 x 5120) and a small odd one.
    for (seed, period, rank, d) in [
        (7u64, 0u64, 8usize, 49usize),
        (11, 2, 256, 4096),
        (0x5eed, 1, 256, 5120),
    ] {
        let mut want = vec![0f32; rank * d];
        cpu_projection(seed, period, rank, d, &mut want);
        let mut out = s.alloc_zeros::<f32>(rank * d).unwrap();
        generate_projection(&gpu, seed, period, rank, d, &mut out).unwrap();
        let got = s.clone_dtoh(&out).unwrap();
        let bad = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            bad, None,
            "seed {seed} period {period} r{rank} d{d}: first differing element"
        );
    }
    let mut wrong = s.alloc_zeros::<f32>(10).unwrap();
    assert!(generate_projection(&gpu, 1, 0, 4, 3, &mut wrong).is_err());
}
