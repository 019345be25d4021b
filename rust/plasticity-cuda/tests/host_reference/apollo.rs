//! The device Apollo step, run on the host: `kernels/apollo.cu` compiled by the
//! system C++ compiler into a shared library (no FMA contraction, as NVRTC
//! compiles it), driven by the crate's own launch plan and parameters
//! (`plasticity_cuda::apollo::{step_plan, params}`), one GPU thread after
//! another, against plasticity-core's `apollo_step` over many steps: both sides
//! of the projection, channel and tensor scaling, the limiter, weight decay,
//! projection refreshes, f32/bf16/f16 weights, and a skipped non-finite step.
//! What remains for a GPU (tests/gpu/apollo_step.rs, via scripts/gpu_check.sh) is
//! that the device runs the same code the same way.
//!
//! Needs `c++`; see main.rs for PLASTICITY_REQUIRE_CXX.

use std::ffi::{c_char, c_int, c_uint, c_ulong, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::{bf16, f16};
use plasticity_core::apollo::{apollo_step, Geometry, Workspace};
use plasticity_core::{ApolloConfig, Element, MatrixState, ProjectionPrecision, ScaleType};
use plasticity_cuda::apollo::{params, step_plan, Addresses, ApolloParams, ApolloState, Scratch};
use plasticity_cuda::FloatType;

type Launch = unsafe extern "C" fn(*const c_char, c_uint, c_uint, *const ApolloParams) -> c_int;

struct Host {
    _lib: libloading::Library,
    launch: Launch,
    sizes: unsafe extern "C" fn(c_int) -> c_ulong,
    to_f16: unsafe extern "C" fn(f32) -> u16,
    from_f16: unsafe extern "C" fn(u16) -> f32,
    to_bf16: unsafe extern "C" fn(f32) -> u16,
}

fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Option<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let found = Command::new(&cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("PLASTICITY_REQUIRE_CXX").is_none(),
                "PLASTICITY_REQUIRE_CXX is set but no C++ compiler runs (CXX or c++)"
            );
            println!("skipped: no C++ compiler (set CXX) to run the kernels on the host");
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let kernel = root.join("../../kernels/apollo.cu").canonicalize().unwrap();
        let lib: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libapollo_on_host.so");
        let out = Command::new(&cxx)
            .args([
                "-std=c++17",
                "-O2",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-shared",
                "-fPIC",
                "-o",
            ])
            .arg(&lib)
            .arg(format!("-DPLASTICITY_KERNEL=\"{}\"", kernel.display()))
            .arg(root.join("tests/host/apollo_on_host.cpp"))
            .output()
            .expect("run the C++ compiler");
        assert!(
            out.status.success(),
            "{cxx} failed on apollo.cu:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: our own library, built just now; the symbols' types are declared above.
        unsafe {
            let l = libloading::Library::new(&lib).unwrap();
            let launch = *l.get::<Launch>(b"host_launch").unwrap();
            let sizes = *l
                .get::<unsafe extern "C" fn(c_int) -> c_ulong>(b"host_sizes")
                .unwrap();
            let to_f16 = *l
                .get::<unsafe extern "C" fn(f32) -> u16>(b"host_f32_to_f16")
                .unwrap();
            let from_f16 = *l
                .get::<unsafe extern "C" fn(u16) -> f32>(b"host_f16_to_f32")
                .unwrap();
            let to_bf16 = *l
                .get::<unsafe extern "C" fn(f32) -> u16>(b"host_f32_to_bf16")
                .unwrap();
            Some(Host {
                _lib: l,
                launch,
                sizes,
                to_f16,
                from_f16,
                to_bf16,
            })
        }
    })
    .as_ref()
}

#[test]
fn layouts_match_the_kernel() {
    let Some(h) = host() else { return };
    unsafe {
        assert_eq!((h.sizes)(0) as usize, std::mem::size_of::<ApolloState>());
        assert_eq!((h.sizes)(1) as usize, std::mem::size_of::<ApolloParams>());
    }
}

#[test]
fn kernel_16_bit_conversions_are_the_half_crates() {
    let Some(h) = host() else { return };
    // Every f16 bit pattern decodes alike; encodings agree on a sweep of f32 values incl.
    // subnormals, overflow, ties and specials (NaN payloads aside: both stay NaN).
    for b in 0..=u16::MAX {
        let (ours, theirs) = (unsafe { (h.from_f16)(b) }, f16::from_bits(b).to_f32());
        assert!(
            ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
            "f16 {b:#x}"
        );
    }
    let mut xs: Vec<f32> = (0..200_000u32)
        .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
        .collect();
    xs.extend([
        0.0,
        -0.0,
        65504.0,
        65519.99,
        65520.0,
        1e-8,
        5.96e-8,
        2.98e-8,
        f32::INFINITY,
        -1.5,
        2049.0,
        2051.0,
    ]);
    for x in xs {
        let (a, b) = (unsafe { (h.to_f16)(x) }, f16::from_f32(x).to_bits());
        assert!(
            a == b || (x.is_nan() && f16::from_bits(a).is_nan()),
            "f16 of {x:e}: {a:#x} vs {b:#x}"
        );
        let (a, b) = (unsafe { (h.to_bf16)(x) }, bf16::from_f32(x).to_bits());
        assert!(
            a == b || (x.is_nan() && bf16::from_bits(a).is_nan()),
            "bf16 of {x:e}: {a:#x} vs {b:#x}"
        );
    }
}

/// One matrix stepped by the host build of the kernels.
struct HostApollo<T> {
    w: Vec<T>,
    m1: Vec<f32>,
    m2: Vec<f32>,
    p: Vec<f32>,
    r: Vec<f32>,
    gsq: Vec<f64>,
    nsq: Vec<f64>,
    rsq: Vec<f64>,
    scale: Vec<f32>,
    state: Box<ApolloState>,
}

impl<T: Copy> HostApollo<T> {
    fn new(w: Vec<T>, m: usize, n: usize, rank: usize) -> Self {
        let s = Scratch::for_matrix(m, n, rank);
        Self {
            w,
            m1: vec![0.0; s.r],
            m2: vec![0.0; s.r],
            p: vec![0.0; s.p],
            r: vec![0.0; s.r],
            gsq: vec![0.0; s.channels],
            nsq: vec![0.0; s.channels],
            rsq: vec![0.0; s.channels],
            scale: vec![0.0; s.channels],
            state: Box::default(),
        }
    }

    fn step(
        &mut self,
        h: &Host,
        cfg: &ApolloConfig,
        float: FloatType,
        m: usize,
        n: usize,
        seed: u64,
        g: &[T],
    ) {
        let a = Addresses {
            w: self.w.as_mut_ptr() as u64,
            g: g.as_ptr() as u64,
            m1: self.m1.as_mut_ptr() as u64,
            m2: self.m2.as_mut_ptr() as u64,
            p: self.p.as_mut_ptr() as u64,
            r: self.r.as_mut_ptr() as u64,
            gsq: self.gsq.as_mut_ptr() as u64,
            nsq: self.nsq.as_mut_ptr() as u64,
            rsq: self.rsq.as_mut_ptr() as u64,
            scale: self.scale.as_mut_ptr() as u64,
            state: &mut *self.state as *mut ApolloState as u64,
        };
        let prm = params(cfg, m, n, seed, &a).unwrap();
        // The host library plays GPU threads through globals (blockIdx, ...): one launch at a time.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        for (entry, shape) in step_plan(float, m, n, cfg.rank) {
            let name = CString::new(entry.clone()).unwrap();
            // SAFETY: every address above points into a live buffer of the size the plan uses.
            let rc = unsafe { (h.launch)(name.as_ptr(), shape.grid.0, shape.block.0, &prm) };
            assert_eq!(rc, 0, "{entry} is not in the host library");
        }
    }
}

fn gradient<T: Element>(len: usize, step: u64, scale: f32) -> Vec<T> {
    let mut g = vec![0f32; len];
    plasticity_core::rng::fill_normal(0xda7a ^ step, scale, &mut g);
    g.into_iter().map(T::from_f32).collect()
}

fn rel_err<T: Element>(a: &[T], b: &[T]) -> f64 {
    let (mut d, mut s) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_f32() as f64, y.to_f32() as f64);
        d += (x - y) * (x - y);
        s += y * y;
    }
    (d / s.max(1e-300)).sqrt()
}

struct Case {
    m: usize,
    n: usize,
    cfg: ApolloConfig,
    steps: u64,
    nan_at: Option<u64>,
}

fn run<T: Element + bytemuck_free::Pod16>(h: &Host, float: FloatType, case: &Case, tol: f64) {
    let Case {
        m,
        n,
        ref cfg,
        steps,
        nan_at,
    } = *case;
    let seed = 0x5eed ^ (m as u64 * 31 + n as u64);
    let w0: Vec<T> = gradient(m * n, 999, 0.05);
    let mut dev = HostApollo::new(w0.clone(), m, n, cfg.rank);
    let geo = Geometry::new(m, n, cfg.rank);
    let (mut w, mut m1, mut m2) = (
        w0,
        vec![0f32; geo.moment_len()],
        vec![0f32; geo.moment_len()],
    );
    let mut st = MatrixState {
        step: 0,
        seed,
        prev_norm: None,
    };
    let mut ws = Workspace::new(1);
    for t in 0..steps {
        let mut g: Vec<T> = gradient(m * n, t, 0.01);
        if nan_at == Some(t) {
            g[3] = T::from_f32(f32::NAN);
        }
        let before = (dev.w.clone(), dev.m1.clone(), *dev.state);
        let out = apollo_step(
            cfg, m, n, &mut w, &g, &mut m1, &mut m2, &mut st, None, &mut ws,
        )
        .unwrap();
        dev.step(h, cfg, float, m, n, seed, &g);
        let what = format!(
            "{float:?} {m}x{n} r{} {:?} step {t}",
            cfg.rank, cfg.scale_type
        );
        assert_eq!(
            dev.state.skipped == 1,
            !out.applied(),
            "{what}: skip decision"
        );
        if !out.applied() {
            assert!(
                dev.w
                    .iter()
                    .zip(&before.0)
                    .all(|(a, b)| a.bits() == b.bits()),
                "{what}: skipped step wrote W"
            );
            assert_eq!(dev.m1, before.1, "{what}: skipped step wrote the moments");
            assert_eq!(
                (dev.state.step, dev.state.prev_norm),
                (before.2.step, before.2.prev_norm)
            );
            assert_eq!(dev.state.skipped_total, before.2.skipped_total + 1);
        }
        assert_eq!(dev.state.step, st.step, "{what}: step count");
        if let Some(prev) = st.prev_norm {
            let e = ((dev.state.prev_norm - prev) / prev).abs();
            assert!(
                e < 1e-4,
                "{what}: limiter norm {} vs {prev}",
                dev.state.prev_norm
            );
        }
        let e = rel_err(&dev.w, &w);
        if std::env::var_os("APOLLO_DEBUG").is_some() {
            println!("{what}: err {e:e} out {out:?} dev {:?}", *dev.state);
        }
        assert!(
            e <= tol,
            "{what}: weight differs by {e:e} (relative), tolerance {tol:e}"
        );
    }
    let e1 = rel_err(&dev.m1, &m1);
    let e2 = rel_err(&dev.m2, &m2);
    assert!(e1 < 1e-3 && e2 < 1e-3, "moments differ: {e1:e}, {e2:e}");
    println!(
        "{float:?} {m}x{n} r{} {:?}: {steps} steps, final weight error {:e}",
        cfg.rank,
        cfg.scale_type,
        rel_err(&dev.w, &w)
    );
}

/// Bit access for the three element types (a test-local stand-in for bytemuck::Pod).
mod bytemuck_free {
    pub trait Pod16: Copy {
        fn bits(self) -> u32;
    }
    impl Pod16 for f32 {
        fn bits(self) -> u32 {
            self.to_bits()
        }
    }
    impl Pod16 for half::bf16 {
        fn bits(self) -> u32 {
            self.to_bits() as u32
        }
    }
    impl Pod16 for half::f16 {
        fn bits(self) -> u32 {
            self.to_bits() as u32
        }
    }
}

fn cfg(rank: usize, scale_type: ScaleType) -> ApolloConfig {
    ApolloConfig {
        lr: 1e-2,
        rank,
        scale_type,
        weight_decay: 0.01,
        update_proj_gap: 7, // several refreshes within the run
        projection_precision: ProjectionPrecision::F32,
        ..Default::default()
    }
}

#[test]
fn host_build_of_the_device_step_tracks_the_core_in_f32() {
    let Some(h) = host() else { return };
    for case in [
        Case {
            m: 64,
            n: 48,
            cfg: cfg(8, ScaleType::Channel),
            steps: 40,
            nan_at: Some(9),
        },
        Case {
            m: 48,
            n: 80,
            cfg: cfg(8, ScaleType::Channel),
            steps: 40,
            nan_at: None,
        },
        Case {
            m: 96,
            n: 40,
            cfg: cfg(1, ScaleType::Tensor),
            steps: 40,
            nan_at: Some(0),
        }, // Apollo-Mini
        Case {
            m: 40,
            n: 96,
            cfg: cfg(4, ScaleType::Tensor),
            steps: 40,
            nan_at: None,
        },
        Case {
            m: 64,
            n: 48,
            cfg: ApolloConfig {
                norm_growth_limit: None,
                correct_bias: false,
                weight_decay: 0.0,
                ..cfg(8, ScaleType::Channel)
            },
            steps: 20,
            nan_at: None,
        },
    ] {
        run::<f32>(h, FloatType::F32, &case, 1e-5);
    }
}

#[test]
fn host_build_of_the_device_step_tracks_the_core_in_16_bit() {
    let Some(h) = host() else { return };
    let a = Case {
        m: 64,
        n: 48,
        cfg: cfg(8, ScaleType::Channel),
        steps: 30,
        nan_at: Some(4),
    };
    let b = Case {
        m: 40,
        n: 72,
        cfg: cfg(4, ScaleType::Channel),
        steps: 30,
        nan_at: None,
    };
    for case in [&a, &b] {
        run::<bf16>(h, FloatType::BF16, case, 1e-3);
        run::<f16>(h, FloatType::F16, case, 1e-3);
    }
}
