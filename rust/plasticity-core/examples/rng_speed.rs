//! Throughput of the seeded Gaussian generator (ns per number).
fn main() {
    let mut v = vec![0f32; 256 * 4096];
    for seed in 0..3 {
        let t = std::time::Instant::now();
        plasticity_core::rng::fill_normal(std::hint::black_box(seed), 1.0, &mut v);
        std::hint::black_box(&v);
        let dt = t.elapsed();
        println!(
            "{:.2} ns/number ({} numbers in {:?})",
            dt.as_nanos() as f64 / v.len() as f64,
            v.len(),
            dt
        );
    }
}
