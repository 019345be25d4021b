//! Apollo step time vs the projection GEMM alone, single shape, in Rust.
//! Usage: cargo run --release --example step_speed -- M N RANK THREADS
use plasticity_core::apollo::{
    apollo_step, ApolloConfig, Geometry, MatrixState, ScaleType, Workspace,
};

// The step's own f32 projection GEMM, so the two timings compare like for like.
#[path = "../src/apollo/projection_gemm.rs"]
mod projection_gemm;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bf16 = args.get(4).map_or(false, |s| s == "bf16");
    let a: Vec<usize> = args[..4].iter().map(|s| s.parse().unwrap()).collect();
    let (m, n, r, threads) = (a[0], a[1], a[2], a[3]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let geo = Geometry::new(m, n, r);
    let mut w = vec![0.01f32; m * n];
    let mut g = vec![0f32; m * n];
    plasticity_core::rng::fill_normal(3, 1.0, &mut g);
    let (mut m1, mut m2) = (vec![0f32; geo.moment_len()], vec![0f32; geo.moment_len()]);
    let mut st = MatrixState::default();
    let cfg = ApolloConfig {
        rank: r,
        scale_type: if r == 1 {
            ScaleType::Tensor
        } else {
            ScaleType::Channel
        },
        projection_precision: if bf16 {
            plasticity_core::ProjectionPrecision::Bf16
        } else {
            plasticity_core::ProjectionPrecision::F32
        },
        ..Default::default()
    };
    let mut ws = Workspace::new(threads);
    let mut p = vec![0f32; r * n.min(m)];
    plasticity_core::rng::fill_normal(4, 1.0, &mut p);
    let mut rr = vec![0f32; geo.moment_len()];
    pool.install(|| {
        for _ in 0..5 {
            let t = std::time::Instant::now();
            apollo_step(
                &cfg, m, n, &mut w, &g, &mut m1, &mut m2, &mut st, None, &mut ws,
            )
            .unwrap();
            let step = t.elapsed();
            let t = std::time::Instant::now();
            projection_gemm::project_f32(m >= n, m, n, r, &g, &p, &mut rr, threads);
            let gm = t.elapsed();
            println!(
                "{m}x{n} r{r} t{threads}: step {:.2} ms, gemm {:.2} ms",
                step.as_secs_f64() * 1e3,
                gm.as_secs_f64() * 1e3
            );
        }
    });
}
