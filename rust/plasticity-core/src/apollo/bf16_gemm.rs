//! C = A·B in bf16 with f32 accumulation on AVX512-BF16 (`vdpbf16ps`).
//!
//! The projection R = G·Pᵀ only feeds the channel norms of Apollo's scaling
//! factors, so bf16 inputs cost little accuracy (apollo-torch itself multiplies
//! in bf16 for bf16 weights), and on CPUs with AVX512-BF16 the dot-product
//! instruction does twice the multiply-adds of an f32 FMA. The projection is
//! the dominant cost of an Apollo step, so this halves the step.
//!
//! Layout: A is M×K row-major bf16 bits (for bf16 weights: G itself, no copy);
//! B is packed once per step into panels of 32 columns, each k-pair of a panel
//! being 32×2 consecutive bf16 (one `__m512bh` per 16 columns). K must be even.

use half::bf16;

use crate::element::Element;

/// Columns per packed panel (two 16-lane f32 accumulators).
const NR: usize = 32;
/// Rows per micro-kernel call.
const MR: usize = 12;
/// k-pairs per cache block: the A strip (MR×2·KCP bf16) stays in L1.
const KCP: usize = 256;

/// Whether this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// B (K×N) packed for the kernel.
pub(crate) struct PackedB {
    pub data: Vec<u16>,
    pub k_pairs: usize,
    pub n: usize,
}

impl PackedB {
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            k_pairs: 0,
            n: 0,
        }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn reset(&mut self, k: usize, n: usize) {
        assert!(k % 2 == 0, "bf16 kernel needs an even K");
        self.k_pairs = k / 2;
        self.n = n;
        let len = self.panels() * self.k_pairs * NR * 2;
        self.data.clear();
        self.data.resize(len, 0); // padded columns stay zero
    }

    #[inline(always)]
    fn idx(&self, kk: usize, j: usize) -> usize {
        let (panel, c) = (j / NR, j % NR);
        ((panel * self.k_pairs + kk / 2) * NR + c) * 2 + (kk % 2)
    }

    /// B[k][j] = src[j·k_len + k] (B = Pᵀ for P given row-major r×K).
    pub fn pack_transposed(&mut self, src: &[f32], k: usize, n: usize) {
        self.reset(k, n);
        for j in 0..n {
            for kk in 0..k {
                let i = self.idx(kk, j);
                self.data[i] = bf16::from_f32(src[j * k + kk]).to_bits();
            }
        }
    }

    /// B[k][j] = src[k·n + j] (B = G for G given row-major K×N).
    pub fn pack_rows<T: Element>(&mut self, src: &[T], k: usize, n: usize) {
        self.reset(k, n);
        let kp = self.k_pairs;
        for p in 0..kp {
            let (r0, r1) = (
                &src[2 * p * n..(2 * p + 1) * n],
                &src[(2 * p + 1) * n..(2 * p + 2) * n],
            );
            for j in 0..n {
                let (panel, c) = (j / NR, j % NR);
                let base = ((panel * kp + p) * NR + c) * 2;
                self.data[base] = bf16::from_f32(r0[j].to_f32()).to_bits();
                self.data[base + 1] = bf16::from_f32(r1[j].to_f32()).to_bits();
            }
        }
    }
}

/// C (M×N, row stride `ldc`) = A (M×K bf16, row-major) · B.
/// Rows are split across the current rayon pool when `threads > 1`.
pub(crate) fn gemm(a: &[u16], m: usize, b: &PackedB, c: &mut [f32], ldc: usize, threads: usize) {
    let k = b.k_pairs * 2;
    assert!(a.len() >= m * k && c.len() >= (m.max(1) - 1) * ldc + b.n && available());
    let strips = m.div_ceil(MR);
    let cp = SendPtr(c.as_mut_ptr());
    let run = |s: usize| {
        let r0 = s * MR;
        let rows = MR.min(m - r0);
        // SAFETY: strips write disjoint row ranges of C; the CPU check was done above.
        unsafe {
            strip(
                a.as_ptr().add(r0 * k),
                k,
                rows,
                b,
                cp.get().add(r0 * ldc),
                ldc,
            )
        }
    };
    if threads > 1 && strips > 1 {
        use rayon::prelude::*;
        (0..strips).into_par_iter().for_each(run);
    } else {
        (0..strips).for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn strip(a: *const u16, k: usize, rows: usize, b: &PackedB, c: *mut f32, ldc: usize) {
    macro_rules! go {
        ($($r:literal)*) => {
            match rows { $($r => strip_rows::<$r>(a, k, b, c, ldc),)* _ => unreachable!() }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn strip(_: *const u16, _: usize, _: usize, _: &PackedB, _: *mut f32, _: usize) {
    unreachable!("bf16 kernel is x86_64-only; callers check available()")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn strip_rows<const R: usize>(
    a: *const u16,
    k: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let kp_total = b.k_pairs;
    for panel in 0..b.panels() {
        let cols = NR.min(b.n - panel * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let bpanel = b.data.as_ptr().add(panel * kp_total * NR * 2);
        let mut kp0 = 0;
        while kp0 < kp_total {
            let kend = (kp0 + KCP).min(kp_total);
            for kp in kp0..kend {
                let bp = bpanel.add(kp * NR * 2);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const _));
                for r in 0..R {
                    let pair = (a.add(r * k + 2 * kp) as *const i32).read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
                }
            }
            kp0 = kend;
        }
        for (r, row) in acc.iter().enumerate() {
            let dst = c.add(r * ldc + panel * NR);
            if cols == NR {
                _mm512_storeu_ps(dst, row[0]);
                _mm512_storeu_ps(dst.add(16), row[1]);
            } else {
                let mut tmp = [0f32; NR];
                _mm512_storeu_ps(tmp.as_mut_ptr(), row[0]);
                _mm512_storeu_ps(tmp.as_mut_ptr().add(16), row[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
            }
        }
    }
}

/// Convert f32 (or any element) values to bf16 bits, round to nearest even.
pub(crate) fn to_bf16_bits<T: Element>(src: &[T], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s.to_f32()).to_bits();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let q = |x: f32| bf16::from_f32(x).to_f32() as f64;
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| q(a[i * k + kk]) * q(b[kk * n + j]))
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_on_ragged_shapes() {
        if !available() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return;
        }
        for &(m, k, n) in &[
            (1, 2, 1),
            (13, 6, 33),
            (25, 64, 32),
            (12, 600, 70),
            (40, 2, 8),
        ] {
            let mut a = vec![0f32; m * k];
            let mut bm = vec![0f32; k * n];
            crate::rng::fill_normal(1, 1.0, &mut a);
            crate::rng::fill_normal(2, 1.0, &mut bm);
            let want = naive(&a, &bm, m, k, n);
            let mut abits = vec![0u16; m * k];
            to_bf16_bits(&a, &mut abits);
            for packed_rows in [true, false] {
                let mut pb = PackedB::new();
                if packed_rows {
                    pb.pack_rows(&bm, k, n);
                } else {
                    let bt: Vec<f32> = (0..n * k).map(|i| bm[(i % k) * n + i / k]).collect(); // Bᵀ row-major
                    pb.pack_transposed(&bt, k, n);
                }
                for threads in [1, 2] {
                    let mut c = vec![f32::NAN; m * n];
                    gemm(&abits, m, &pb, &mut c, n, threads);
                    for (x, y) in c.iter().zip(&want) {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{m}×{k}×{n}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}
