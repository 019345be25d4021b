//! The memory passes of an Apollo step, parallel over disjoint ranges.
//!
//! Every parallel loop hands each task a disjoint range of rows/columns and
//! writes only there; `Shared` carries the base pointers across threads.

use rayon::prelude::*;

use super::{AdamConfig, Geometry, Side};
use crate::element::{DType, Element};
use crate::rng;

/// Call an `#[inline(always)]` generic kernel compiled for the widest vector
/// ISA the CPU has (AVX-512, AVX2+FMA, or the baseline), chosen at run time.
/// The arithmetic is the same in every variant, so results do not depend on it.
macro_rules! simd {
    ($f:ident :: <$t:ty> ($($a:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if crate::apollo::passes::isa() == 2 {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
                unsafe fn wide<T: Element>(f: impl FnOnce() -> ()) { f() }
                unsafe { wide::<$t>(|| $f::<$t>($($a),*)) }
            } else if crate::apollo::passes::isa() == 1 {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide<T: Element>(f: impl FnOnce() -> ()) { f() }
                unsafe { wide::<$t>(|| $f::<$t>($($a),*)) }
            } else {
                $f::<$t>($($a),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        { $f::<$t>($($a),*) }
    }};
}

/// 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline; detected once.
pub(crate) fn isa() -> u8 {
    static ISA: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return 2;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return 1;
            }
        }
        0
    })
}

/// A raw pointer that may cross threads; users write disjoint ranges only.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}
impl<T> Shared<T> {
    /// # Safety
    /// The range must be in bounds and not written by any other task.
    #[inline(always)]
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Run `f` on contiguous sub-ranges of `0..len`, in parallel when `threads > 1`.
fn for_ranges<F: Fn(std::ops::Range<usize>) + Sync + Send>(len: usize, threads: usize, f: F) {
    if threads <= 1 || len < 2 {
        f(0..len);
        return;
    }
    let tasks = (threads * 4).min(len);
    let chunk = len.div_ceil(tasks);
    (0..tasks).into_par_iter().for_each(|t| {
        let s = t * chunk;
        let e = ((t + 1) * chunk).min(len);
        if s < e {
            f(s..e)
        }
    });
}

pub(crate) fn fill_normal_parallel(seed: u64, std: f32, out: &mut [f32]) {
    // Ranges start on even indices so each pair is generated once.
    let len = out.len();
    let pairs = len.div_ceil(2);
    let ptr = Shared(out.as_mut_ptr());
    let threads = if len < 1 << 15 {
        1
    } else {
        rayon::current_num_threads()
    };
    for_ranges(pairs, threads, |pr| {
        let s = pr.start * 2;
        let e = (pr.end * 2).min(len);
        let dst = unsafe { ptr.slice(s, e - s) };
        rng::fill_normal_from(seed, std, s, dst);
    });
}

/// The f32 view of G: the buffer itself for f32, else a converted copy in `g32`.
/// Conversion happens inside `project`'s norm pass, so this only reinterprets.
fn as_f32<T: Element>(g: &[T]) -> Option<&[f32]> {
    if T::DTYPE == DType::F32 {
        Some(bytemuck::cast_slice(g))
    } else {
        None
    }
}

/// Pass 1: the squared channel norms of G (f64) and R = G·Pᵀ or P·G.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project<T: Element>(
    geo: &Geometry,
    g: &[T],
    p: &[f32],
    r: &mut [f32],
    gsq: &mut [f64],
    g32: &mut Vec<f32>,
    a16: &mut Vec<u16>,
    packed: &mut super::bf16_gemm::PackedB,
    use_bf16: bool,
    threads: usize,
) {
    if geo.rank == 1 {
        return project_rank1(geo, g, p, r, gsq, threads);
    }
    if use_bf16 {
        return project_bf16(geo, g, p, r, gsq, a16, packed, threads);
    }
    let (m, n, rank) = (geo.m, geo.n, geo.rank);
    let native = as_f32(g);
    if native.is_none() && g32.len() < m * n {
        g32.resize(m * n, 0.0);
    }
    let conv = Shared(g32.as_mut_ptr());
    let sq = Shared(gsq.as_mut_ptr());
    match geo.side() {
        Side::Right => for_ranges(m, threads, |rows| {
            let sums = unsafe { sq.slice(rows.start, rows.len()) };
            for (i, acc) in rows.clone().zip(sums.iter_mut()) {
                let src = &g[i * n..(i + 1) * n];
                *acc = match native {
                    Some(f) => sumsq(&f[i * n..(i + 1) * n]),
                    None => convert_sumsq(src, unsafe { conv.slice(i * n, n) }),
                };
            }
        }),
        Side::Left => for_ranges(n, threads, |cols| {
            let sums = unsafe { sq.slice(cols.start, cols.len()) };
            sums.fill(0.0);
            for i in 0..m {
                let row = i * n;
                match native {
                    Some(f) => {
                        for (acc, &x) in sums.iter_mut().zip(&f[row + cols.start..row + cols.end]) {
                            *acc += (x as f64) * (x as f64);
                        }
                    }
                    None => {
                        let dst = unsafe { conv.slice(row + cols.start, cols.len()) };
                        for ((acc, d), &x) in sums
                            .iter_mut()
                            .zip(dst.iter_mut())
                            .zip(&g[row + cols.start..row + cols.end])
                        {
                            let v = x.to_f32();
                            *d = v;
                            *acc += (v as f64) * (v as f64);
                        }
                    }
                }
            }
        }),
    }
    let gf: &[f32] = match native {
        Some(f) => f,
        None => &g32[..m * n],
    };
    let right = geo.side() == Side::Right;
    super::projection_gemm::project_f32(right, m, n, rank, gf, p, r, threads);
}

/// Rank 1 (Apollo-Mini): R is a vector, so the projection is a GEMV fused into
/// the norm pass and G is read once here instead of twice (no GEMM call).
fn project_rank1<T: Element>(geo: &Geometry, g: &[T], p: &[f32], r: &mut [f32], gsq: &mut [f64], threads: usize) {
    let (m, n) = (geo.m, geo.n);
    let (sq, rp) = (Shared(gsq.as_mut_ptr()), Shared(r.as_mut_ptr()));
    match geo.side() {
        Side::Right => for_ranges(m, threads, |rows| {
            let (sums, rs) = unsafe { (sq.slice(rows.start, rows.len()), rp.slice(rows.start, rows.len())) };
            let gs = &g[rows.start * n..rows.end * n];
            simd!(rows_sumsq_dot::<T>(gs, p, n, sums, rs));
        }),
        Side::Left => for_ranges(n, threads, |cols| {
            let (sums, rs) = unsafe { (sq.slice(cols.start, cols.len()), rp.slice(cols.start, cols.len())) };
            simd!(cols_sumsq_dot::<T>(g, p, m, n, cols.start, sums, rs));
        }),
    }
}

#[inline(always)]
fn rows_sumsq_dot<T: Element>(gs: &[T], p: &[f32], n: usize, sums: &mut [f64], rs: &mut [f32]) {
    // Eight independent partial sums per row so the reductions vectorise.
    const L: usize = 8;
    for ((row, s), d) in gs.chunks_exact(n).zip(sums.iter_mut()).zip(rs.iter_mut()) {
        let (mut a, mut b) = ([0f64; L], [0f32; L]);
        let (rc, pc) = (row.chunks_exact(L), p[..n].chunks_exact(L));
        let (rrest, prest) = (rc.remainder(), pc.remainder());
        for (xs, ps) in rc.zip(pc) {
            for k in 0..L {
                let v = xs[k].to_f32();
                a[k] += (v as f64) * (v as f64);
                b[k] += v * ps[k];
            }
        }
        let (mut sa, mut sb): (f64, f32) = (a.iter().sum(), b.iter().sum());
        for (&x, &pv) in rrest.iter().zip(prest) {
            let v = x.to_f32();
            sa += (v as f64) * (v as f64);
            sb += v * pv;
        }
        *s = sa;
        *d = sb;
    }
}

#[inline(always)]
fn cols_sumsq_dot<T: Element>(g: &[T], p: &[f32], m: usize, n: usize, c0: usize, sums: &mut [f64], rs: &mut [f32]) {
    // Squares summed in f32 over blocks of 64 rows (full-width vectors), then
    // flushed into the f64 totals: f64 accuracy without f64-wide arithmetic.
    const BLOCK: usize = 64;
    sums.fill(0.0);
    rs.fill(0.0);
    let w = sums.len();
    let mut part = vec![0f32; w];
    for i0 in (0..m).step_by(BLOCK) {
        part.fill(0.0);
        for (i, &pi) in p.iter().enumerate().take(m.min(i0 + BLOCK)).skip(i0) {
            let row = &g[i * n + c0..i * n + c0 + w];
            for ((a, b), &x) in part.iter_mut().zip(rs.iter_mut()).zip(row) {
                let v = x.to_f32();
                *a += v * v;
                *b += pi * v;
            }
        }
        for (s, &a) in sums.iter_mut().zip(&part) {
            *s += a as f64;
        }
    }
}

/// Pass 1 with the bf16 kernel: channel norms in f64 from the exact gradient,
/// the projection from bf16-rounded G and P.
#[allow(clippy::too_many_arguments)]
fn project_bf16<T: Element>(
    geo: &Geometry,
    g: &[T],
    p: &[f32],
    r: &mut [f32],
    gsq: &mut [f64],
    a16: &mut Vec<u16>,
    packed: &mut super::bf16_gemm::PackedB,
    threads: usize,
) {
    use super::bf16_gemm as k;
    let (m, n, rank) = (geo.m, geo.n, geo.rank);
    let sq = Shared(gsq.as_mut_ptr());
    match geo.side() {
        Side::Right => {
            // A = G: bf16 weights are used in place; others converted once.
            let native16 = T::DTYPE == DType::BF16;
            if !native16 && a16.len() < m * n {
                a16.resize(m * n, 0);
            }
            let conv = Shared(a16.as_mut_ptr());
            for_ranges(m, threads, |rows| {
                let sums = unsafe { sq.slice(rows.start, rows.len()) };
                for (i, acc) in rows.clone().zip(sums.iter_mut()) {
                    let src = &g[i * n..(i + 1) * n];
                    *acc = sumsq_t(src);
                    if !native16 {
                        k::to_bf16_bits(src, unsafe { conv.slice(i * n, n) });
                    }
                }
            });
            let a: &[u16] = if native16 {
                bytemuck::cast_slice(g)
            } else {
                &a16[..m * n]
            };
            packed.pack_transposed(p, n, rank);
            k::gemm(a, m, packed, r, rank, threads);
        }
        Side::Left => {
            for_ranges(n, threads, |cols| {
                let sums = unsafe { sq.slice(cols.start, cols.len()) };
                sums.fill(0.0);
                for i in 0..m {
                    let row = &g[i * n + cols.start..i * n + cols.end];
                    for (acc, &x) in sums.iter_mut().zip(row) {
                        let v = x.to_f32() as f64;
                        *acc += v * v;
                    }
                }
            });
            if a16.len() < rank * m {
                a16.resize(rank * m, 0);
            }
            k::to_bf16_bits(p, &mut a16[..rank * m]);
            packed.pack_rows(g, m, n);
            k::gemm(&a16[..rank * m], rank, packed, r, n, threads);
        }
    }
}

#[inline]
fn sumsq_t<T: Element>(x: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let v = c[k].to_f32() as f64;
            acc[k] += v * v;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in rest {
        let v = v.to_f32() as f64;
        s += v * v;
    }
    s
}

#[inline]
fn sumsq(x: &[f32]) -> f64 {
    // Eight f32 partial sums of f64-promoted squares: vectorises and is exact
    // enough for any finite gradient (no f32 overflow of the squares).
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += (c[k] as f64) * (c[k] as f64);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in rest {
        s += (v as f64) * (v as f64);
    }
    s
}

#[inline]
fn convert_sumsq<T: Element>(src: &[T], dst: &mut [f32]) -> f64 {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x.to_f32();
    }
    sumsq(dst)
}

pub(crate) fn all_finite(x: &[f32], threads: usize) -> bool {
    all_finite_t(x, threads)
}

pub(crate) fn all_finite_t<T: Element>(x: &[T], threads: usize) -> bool {
    let check = |s: &[T]| s.iter().all(|v| v.to_f32().is_finite());
    if threads <= 1 || x.len() < 1 << 16 {
        check(x)
    } else {
        x.par_chunks(1 << 14).all(check)
    }
}

/// Adam moments on R, and per channel Σ N² and Σ R² (N = M/(√V+ε)).
#[allow(clippy::too_many_arguments)]
pub(crate) fn moments(
    geo: &Geometry,
    adam: &AdamConfig,
    r: &[f32],
    m1: &mut [f32],
    m2: &mut [f32],
    nsq: &mut [f64],
    rsq: &mut [f64],
    threads: usize,
) {
    let (b1, b2, eps) = (adam.beta1, adam.beta2, adam.eps);
    let (c1, c2) = (1.0 - b1, 1.0 - b2);
    let (pm, pv, pn, pr) = (
        Shared(m1.as_mut_ptr()),
        Shared(m2.as_mut_ptr()),
        Shared(nsq.as_mut_ptr()),
        Shared(rsq.as_mut_ptr()),
    );
    let rank = geo.rank;
    let update = |x: f32, m: &mut f32, v: &mut f32| -> f32 {
        *m = b1 * *m + c1 * x;
        *v = b2 * *v + c2 * x * x;
        *m / (v.sqrt() + eps)
    };
    match geo.side() {
        Side::Right => for_ranges(geo.m, threads, |rows| {
            let len = rows.len() * rank;
            let (ms, vs) = unsafe {
                (
                    pm.slice(rows.start * rank, len),
                    pv.slice(rows.start * rank, len),
                )
            };
            let (ns, rs) = unsafe {
                (
                    pn.slice(rows.start, rows.len()),
                    pr.slice(rows.start, rows.len()),
                )
            };
            let rr = &r[rows.start * rank..rows.end * rank];
            for (k, (nacc, racc)) in ns.iter_mut().zip(rs.iter_mut()).enumerate() {
                let (mut a, mut b) = (0f64, 0f64);
                let seg = k * rank..(k + 1) * rank;
                for ((&x, m), v) in rr[seg.clone()]
                    .iter()
                    .zip(ms[seg.clone()].iter_mut())
                    .zip(vs[seg].iter_mut())
                {
                    let nv = update(x, m, v);
                    a += (nv as f64) * (nv as f64);
                    b += (x as f64) * (x as f64);
                }
                *nacc = a;
                *racc = b;
            }
        }),
        Side::Left => {
            let n = geo.n;
            for_ranges(n, threads, |cols| {
                let (ns, rs) = unsafe {
                    (
                        pn.slice(cols.start, cols.len()),
                        pr.slice(cols.start, cols.len()),
                    )
                };
                ns.fill(0.0);
                rs.fill(0.0);
                for k in 0..rank {
                    let off = k * n + cols.start;
                    let (ms, vs) =
                        unsafe { (pm.slice(off, cols.len()), pv.slice(off, cols.len())) };
                    for ((((&x, m), v), a), b) in r[off..off + cols.len()]
                        .iter()
                        .zip(ms.iter_mut())
                        .zip(vs.iter_mut())
                        .zip(ns.iter_mut())
                        .zip(rs.iter_mut())
                    {
                        let nv = update(x, m, v);
                        *a += (nv as f64) * (nv as f64);
                        *b += (x as f64) * (x as f64);
                    }
                }
            })
        }
    }
}

#[inline(always)]
fn store<T: Element>(x: f32, round_seed: Option<u64>, idx: usize) -> T {
    match round_seed {
        None => T::from_f32(x),
        Some(s) => T::from_f32_stochastic(x, rng::bits(s, idx as u64) as u32),
    }
}

/// Pass 2: W ← (W − c⊙G) − decay·(W − c⊙G), c per channel (already including
/// step size, α, s and the limiter).
pub(crate) fn apply_update<T: Element>(
    geo: &Geometry,
    w: &mut [T],
    g: &[T],
    coef: &[f32],
    decay: f32,
    round_seed: Option<u64>,
    threads: usize,
) {
    let (m, n) = (geo.m, geo.n);
    let pw = Shared(w.as_mut_ptr());
    let side = geo.side();
    for_ranges(m, threads, |rows| {
        let ws = unsafe { pw.slice(rows.start * n, rows.len() * n) };
        let gs = &g[rows.start * n..rows.end * n];
        simd!(update_rows::<T>(
            side, rows.start, n, ws, gs, coef, decay, round_seed
        ));
    });
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_rows<T: Element>(
    side: Side,
    first_row: usize,
    n: usize,
    ws: &mut [T],
    gs: &[T],
    coef: &[f32],
    decay: f32,
    round_seed: Option<u64>,
) {
    for (li, (wrow, grow)) in ws.chunks_exact_mut(n).zip(gs.chunks_exact(n)).enumerate() {
        let i = first_row + li;
        let base = i * n;
        match side {
            Side::Right => {
                let c = coef[i];
                for (j, (wv, &gv)) in wrow.iter_mut().zip(grow).enumerate() {
                    let mut x = wv.to_f32() - c * gv.to_f32();
                    if decay > 0.0 {
                        x -= decay * x;
                    }
                    *wv = store(x, round_seed, base + j);
                }
            }
            Side::Left => {
                for (j, ((wv, &gv), &c)) in wrow.iter_mut().zip(grow).zip(coef).enumerate() {
                    let mut x = wv.to_f32() - c * gv.to_f32();
                    if decay > 0.0 {
                        x -= decay * x;
                    }
                    *wv = store(x, round_seed, base + j);
                }
            }
        }
    }
}

/// Fused elementwise AdamW (HF convention) over the whole buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_update<T: Element>(
    cfg: &AdamConfig,
    step_size: f32,
    w: &mut [T],
    g: &[T],
    m1: &mut [f32],
    m2: &mut [f32],
    round_seed: Option<u64>,
    threads: usize,
) {
    let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.eps);
    let (c1, c2) = (1.0 - b1, 1.0 - b2);
    let decay = cfg.lr * cfg.weight_decay;
    let (pw, pm, pv) = (
        Shared(w.as_mut_ptr()),
        Shared(m1.as_mut_ptr()),
        Shared(m2.as_mut_ptr()),
    );
    for_ranges(g.len(), threads, |rg| {
        let (ws, ms, vs) = unsafe {
            (
                pw.slice(rg.start, rg.len()),
                pm.slice(rg.start, rg.len()),
                pv.slice(rg.start, rg.len()),
            )
        };
        for (k, (((wv, m), v), &gv)) in ws
            .iter_mut()
            .zip(ms.iter_mut())
            .zip(vs.iter_mut())
            .zip(&g[rg.clone()])
            .enumerate()
        {
            let x = gv.to_f32();
            *m = b1 * *m + c1 * x;
            *v = b2 * *v + c2 * x * x;
            let mut y = wv.to_f32() - step_size * (*m / (v.sqrt() + eps));
            if decay > 0.0 {
                y -= decay * y;
            }
            *wv = store(y, round_seed, rg.start + k);
        }
    });
}
