//! Task-vector (weight-delta) arithmetic, one tensor at a time.
//!
//! A task vector is `δ = W_finetuned − W_base`. Everything here works on one
//! tensor's flat slices, so a caller streams a model tensor by tensor and never
//! holds more than one tensor per input in memory.
//!
//! - [`delta_of`] / [`add_delta`]: `δ = live − base` and `w += s·δ` in a
//!   precision wide enough that `base + (live − base)` gives `live` back bit for
//!   bit (f32 weights: f64 math; bf16/f16 weights: f32 math). [`check_roundtrip`]
//!   tells whether that holds for a given pair.
//! - [`task_arithmetic`]: merged delta `λ·Σ wᵢ·δᵢ` (optionally divided by `Σ wᵢ`).
//! - [`ties`]: TIES-merging with mergekit 0.1.5's per-tensor semantics (see its
//!   doc comment for every rule, including how ties at the trim threshold break).
//! - [`pair_stats`]: `‖a‖`, `‖b‖`, `a·b` with f64 accumulation, for `tv diff`.
//!
//! The merge math runs in the precision of the deltas ([`Real`]: f32 or f64)
//! and in mergekit's operation order, so f32 deltas give the same roundings as
//! mergekit's torch code (weights and λ are rounded to f32 first, as
//! `torch.tensor(weights, dtype=deltas.dtype)` does). Every check runs before
//! the first write: an `Err` leaves every output buffer untouched — except the
//! one check that can only be made afterwards: a merged delta that overflows
//! `D` (finite inputs whose weighted sum exceeds its range) is an `Err` with
//! `out` holding unspecified values (callers pass a scratch buffer).

use std::ops::{Add, Div, Mul, Neg, Sub};

use half::{bf16, f16};
use rayon::prelude::*;

use crate::element::Element;
use crate::error::{CoreError, Result};

#[cfg(test)]
mod tests;

/// Elements per parallel work item; tensors shorter than [`PAR_MIN`] run on
/// the calling thread.
const CHUNK: usize = 1 << 15;
const PAR_MIN: usize = 1 << 16;

/// A float a delta is stored and merged in: f32 or f64.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NAME: &'static str;
    /// Round to nearest even (f64 → f32) or exact (f64 → f64).
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    /// Bit pattern widened to u64 (for bit-exact comparisons).
    fn bits(self) -> u64;
    fn from_bits(b: u64) -> Self;
    /// Bits in [`Real::bits`] (32 or 64).
    const KEY_BITS: u32;
}

/// `Real` for one IEEE float type `$t` whose bit pattern is `$bits`. Every
/// conversion is a plain `as` cast, a no-op where source and target coincide.
macro_rules! impl_real {
    ($t:ident, $bits:ty, $name:literal) => {
        #[allow(clippy::unnecessary_cast)]
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $t::is_finite(self)
            }
            #[inline(always)]
            fn bits(self) -> u64 {
                self.to_bits() as u64
            }
            #[inline(always)]
            fn from_bits(b: u64) -> Self {
                $t::from_bits(b as $bits)
            }
            const KEY_BITS: u32 = <$bits>::BITS;
        }
    };
}
impl_real!(f32, u32, "float32");
impl_real!(f64, u64, "float64");

/// Anything [`pair_stats`] can read: the weight dtypes and f64.
pub trait Scalar: Copy + Send + Sync + 'static {
    fn as_f64(self) -> f64;
}
/// Every `Scalar` widens to f64 exactly, which `From` provides for all of them.
macro_rules! impl_scalar {
    ($($t:ty),*) => {
        $(impl Scalar for $t {
            #[inline(always)]
            fn as_f64(self) -> f64 {
                f64::from(self)
            }
        })*
    };
}
impl_scalar!(f32, f64, bf16, f16);

/// A weight dtype together with the precision its deltas are exact in.
///
/// f32 weights → f64 (53-bit significand holds the difference of two 24-bit
/// ones unless their exponents are more than 29 apart); bf16 (8-bit) and f16
/// (11-bit) weights → f32 (24-bit: exact unless the exponents are more than 16
/// resp. 13 apart, subnormals included since f32's range covers them).
pub trait Weight: Element {
    type Wide: Real;
    #[inline(always)]
    fn widen(self) -> Self::Wide {
        Self::Wide::from_f32(self.to_f32())
    }
    /// Round once, to nearest even.
    fn narrow(x: Self::Wide) -> Self;
}
impl Weight for f32 {
    type Wide = f64;
    #[inline(always)]
    fn narrow(x: f64) -> Self {
        x as f32
    }
}
impl Weight for bf16 {
    type Wide = f32;
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}
impl Weight for f16 {
    type Wide = f32;
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        f16::from_f32(x)
    }
}

// ---------------------------------------------------------------- helpers

fn for_chunks_mut<T: Send, F>(out: &mut [T], f: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| f(c * CHUNK, chunk));
    } else {
        f(0, out);
    }
}

/// Sets `out[i] = λ·merge(i, scratch)` for every element, in parallel chunks
/// (λ = 1 skips the multiply: no extra rounding), then checks `out` is finite.
/// `scratch` has `inputs` slots, allocated once per chunk.
fn merge_elementwise<D: Real>(
    out: &mut [D],
    inputs: usize,
    lambda: f64,
    merge: impl Fn(usize, &mut [D]) -> D + Sync + Send,
) -> Result<()> {
    let lam = D::from_f64(lambda);
    for_chunks_mut(out, |off, chunk| {
        let mut scratch = vec![D::ZERO; inputs];
        for (j, o) in chunk.iter_mut().enumerate() {
            let mut x = merge(off + j, &mut scratch);
            if lambda != 1.0 {
                x = x * lam;
            }
            *o = x;
        }
    });
    check_merged(out)
}

/// Index of the first non-finite element, if any.
fn first_non_finite<D: Real>(x: &[D]) -> Option<usize> {
    let scan = |(c, chunk): (usize, &[D])| {
        chunk
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| c * CHUNK + i)
    };
    if x.len() >= PAR_MIN {
        x.par_chunks(CHUNK).enumerate().filter_map(scan).min()
    } else {
        scan((0, x))
    }
}

fn check_finite_param(what: &str, x: f64) -> Result<()> {
    if !x.is_finite() {
        return Err(CoreError::Config(format!("{what} must be finite, got {x}")));
    }
    Ok(())
}

fn check_inputs<D: Real>(deltas: &[&[D]], weights: &[f64], n: usize) -> Result<()> {
    if deltas.is_empty() {
        return Err(CoreError::Config("no task vectors to merge".into()));
    }
    if weights.len() != deltas.len() {
        return Err(CoreError::Config(format!(
            "{} weights for {} task vectors",
            weights.len(),
            deltas.len()
        )));
    }
    for (i, d) in deltas.iter().enumerate() {
        if d.len() != n {
            return Err(CoreError::Shape(format!(
                "task vector {i} has {} elements, the output has {n}",
                d.len()
            )));
        }
    }
    for (i, &w) in weights.iter().enumerate() {
        check_finite_param(&format!("weight {i}"), w)?;
    }
    Ok(())
}

fn check_deltas_finite<D: Real>(deltas: &[&[D]]) -> Result<()> {
    for (i, d) in deltas.iter().enumerate() {
        if let Some(j) = first_non_finite(d) {
            return Err(CoreError::Config(format!(
                "task vector {i} has a non-finite value at element {j}"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- δ and w + s·δ

/// `out = live − base`, each element widened to `D` first and subtracted once
/// in `D`. With `D = W::Wide` (f64 for f32 weights, f32 for bf16/f16) the
/// result is exact unless the two values' exponents are far apart (see
/// [`Weight`]); with `D = f32` for f32 weights it is the correctly rounded f32
/// difference (what torch/mergekit compute). Non-finite weights give
/// non-finite deltas (inf − inf = NaN); [`check_roundtrip`] reports them.
pub fn delta_of<W: Element, D: Real>(live: &[W], base: &[W], out: &mut [D]) -> Result<()> {
    if live.len() != base.len() || out.len() != live.len() {
        return Err(CoreError::Shape(format!(
            "live has {}, base {} and out {} elements",
            live.len(),
            base.len(),
            out.len()
        )));
    }
    for_chunks_mut(out, |off, o| {
        let l = &live[off..off + o.len()];
        let b = &base[off..off + o.len()];
        for ((o, l), b) in o.iter_mut().zip(l).zip(b) {
            *o = D::from_f32(l.to_f32()) - D::from_f32(b.to_f32());
        }
    });
    Ok(())
}

#[inline(always)]
fn apply_one<W: Weight, D: Real>(w: W, d: D, s: W::Wide, unit: bool) -> W::Wide {
    let d = W::Wide::from_f64(d.to_f64());
    if unit {
        w.widen() + d
    } else {
        w.widen() + s * d
    }
}

/// `w = w + scale·δ` in place, computed in `W::Wide` (f64 for f32 weights, f32
/// for bf16/f16) and rounded once to the weight's dtype.
///
/// `scale = ±1` costs no rounding of its own, so `base + (live − base)` and
/// `live − (live − base)` reproduce `live` and `base` bit for bit whenever the
/// delta was exact (see [`check_roundtrip`]). Other scales are rounded to
/// `W::Wide` and multiply first.
///
/// Refused before any write: a length mismatch, a non-finite scale or delta,
/// or a finite weight that the update would make non-finite (overflow).
pub fn add_delta<W: Weight, D: Real>(w: &mut [W], delta: &[D], scale: f64) -> Result<()> {
    if w.len() != delta.len() {
        return Err(CoreError::Shape(format!(
            "weight has {} elements, delta {}",
            w.len(),
            delta.len()
        )));
    }
    check_finite_param("scale", scale)?;
    if let Some(j) = first_non_finite(delta) {
        return Err(CoreError::Config(format!(
            "delta has a non-finite value at element {j}"
        )));
    }
    let s = W::Wide::from_f64(scale);
    let unit = scale == 1.0;
    // Dry run: no finite weight may become non-finite.
    let bad = {
        let w: &[W] = w;
        let scan = |(c, chunk): (usize, &[W])| {
            let d = &delta[c * CHUNK..c * CHUNK + chunk.len()];
            chunk
                .iter()
                .zip(d)
                .position(|(&x, &d)| {
                    x.to_f32().is_finite()
                        && !W::narrow(apply_one(x, d, s, unit)).to_f32().is_finite()
                })
                .map(|i| c * CHUNK + i)
        };
        if w.len() >= PAR_MIN {
            w.par_chunks(CHUNK).enumerate().filter_map(scan).min()
        } else {
            scan((0, w))
        }
    };
    if let Some(j) = bad {
        return Err(CoreError::Config(format!(
            "adding the delta (scale {scale}) overflows the weight at element {j}"
        )));
    }
    for_chunks_mut(w, |off, chunk| {
        let d = &delta[off..off + chunk.len()];
        for (x, &d) in chunk.iter_mut().zip(d) {
            *x = W::narrow(apply_one(*x, d, s, unit));
        }
    });
    Ok(())
}

/// What [`check_roundtrip`] found for one `(live, base)` pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundTrip {
    pub elements: usize,
    /// Elements where `base + δ` or `live − δ` (δ = [`delta_of`] in `W::Wide`)
    /// does not give back the other value exactly, bit for bit. Causes: an
    /// exponent spread too wide for `W::Wide` (f32 weights: > 29 binades apart,
    /// e.g. 1e9 next to 1e-3; bf16: > 16; f16: > 13) or non-finite weights.
    pub not_exact: usize,
    /// Of those, elements that differ only in the sign of a zero: a −0.0
    /// weight comes back as +0.0 (`live = −0`: `base + (−0 − base)` is
    /// `base − base = +0`; likewise `base = −0` through `live − δ`). Under
    /// round-to-nearest an exact zero sum is −0 only when both terms are −0,
    /// so no δ can avoid it. Equal as numbers.
    pub signed_zero: usize,
}

impl RoundTrip {
    pub fn exact(&self) -> bool {
        self.not_exact == 0
    }
}

/// Check that `live → δ = live − base → base + δ == live` and `live − δ ==
/// base` hold bit for bit for every element, with the arithmetic of
/// [`delta_of`] and [`add_delta`] in `W::Wide`. Callers that must be able to
/// roll back exactly run this once on their tensors.
pub fn check_roundtrip<W: Weight>(live: &[W], base: &[W]) -> Result<RoundTrip> {
    if live.len() != base.len() {
        return Err(CoreError::Shape(format!(
            "live has {} elements, base {}",
            live.len(),
            base.len()
        )));
    }
    let one = |(l, b): (&W, &W)| -> (usize, usize) {
        let d = l.widen() - b.widen();
        let back = W::narrow(b.widen() + d);
        let fwd = W::narrow(l.widen() - d);
        let lb: u32 = bits_of(*l);
        let bb: u32 = bits_of(*b);
        let ok = bits_of(back) == lb && bits_of(fwd) == bb;
        if ok {
            (0, 0)
        } else {
            let zero =
                back.to_f32() == l.to_f32() && fwd.to_f32() == b.to_f32() && l.to_f32() == 0.0;
            (1, zero as usize)
        }
    };
    let sum = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
    let (not_exact, signed_zero) = if live.len() >= PAR_MIN {
        live.par_chunks(CHUNK)
            .zip(base.par_chunks(CHUNK))
            .map(|(l, b)| l.iter().zip(b).map(one).fold((0, 0), sum))
            .reduce(|| (0, 0), sum)
    } else {
        live.iter().zip(base).map(one).fold((0, 0), sum)
    };
    Ok(RoundTrip {
        elements: live.len(),
        not_exact,
        signed_zero,
    })
}

fn bits_of<W: Element>(x: W) -> u32 {
    let b = bytemuck::bytes_of(&x);
    let mut a = [0u8; 4];
    a[..b.len()].copy_from_slice(b);
    u32::from_le_bytes(a)
}

// ---------------------------------------------------------------- task arithmetic

/// Merged delta of task arithmetic: `out = λ · Σᵢ wᵢ·δᵢ`, or with `normalize`
/// `λ · Σᵢ wᵢ·δᵢ / Σᵢ wᵢ` (a divisor with |Σw| < 1e-8 counts as 1), exactly
/// mergekit 0.1.5's `task_arithmetic` (whose `normalize` defaults to false).
///
/// The math runs in `D` in mergekit's order: `wᵢ` and `λ` rounded to `D`,
/// products rounded, the sum taken over i = 0, 1, … in order, λ applied last
/// (skipped when λ = 1). Negate a vector with w = −1; scale it with w or λ.
pub fn task_arithmetic<D: Real>(
    deltas: &[&[D]],
    weights: &[f64],
    lambda: f64,
    normalize: bool,
    out: &mut [D],
) -> Result<()> {
    check_inputs(deltas, weights, out.len())?;
    check_finite_param("lambda", lambda)?;
    check_deltas_finite(deltas)?;
    let w: Vec<D> = weights.iter().map(|&w| D::from_f64(w)).collect();
    let mut div = D::ZERO;
    for &x in &w {
        div = div + x;
    }
    if div.to_f64().abs() < 1e-8 {
        div = D::ONE;
    }
    merge_elementwise(out, 0, lambda, |i, _| {
        let mut acc = D::ZERO;
        for (d, &w) in deltas.iter().zip(&w) {
            acc = acc + w * d[i];
        }
        if normalize {
            acc = acc / div;
        }
        acc
    })
}

/// The merged delta must be finite (finite inputs can still overflow `D`).
fn check_merged<D: Real>(out: &[D]) -> Result<()> {
    match first_non_finite(out) {
        None => Ok(()),
        Some(j) => Err(CoreError::Config(format!(
            "the merged delta overflows {} at element {j} (weights or lambda too large)",
            D::NAME
        ))),
    }
}

// ---------------------------------------------------------------- TIES

/// How one task vector was trimmed by [`ties`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trim {
    /// Elements kept: `max(1, ⌊density·n⌋)`, or all n when density = 1.
    pub kept: usize,
    /// |δ| of the smallest kept element (0 when nothing is trimmed).
    pub threshold: f64,
    /// Elements with |δ| exactly equal to the threshold.
    pub tied: usize,
    /// How many of those were kept (the first ones in index order).
    pub tied_kept: usize,
}

impl Trim {
    /// True when the threshold tie straddles the cut, i.e. which of the tied
    /// elements are kept is a convention (ours: lowest index first).
    pub fn straddles(&self) -> bool {
        self.tied_kept < self.tied && self.threshold > 0.0
    }
}

/// Per-input trim plan: keep `|δ| > thr`, plus `|δ| == thr` at index ≤ `last_tie`.
#[derive(Clone, Copy)]
struct Cut<D> {
    all: bool,
    thr: D,
    last_tie: usize,
}

impl<D: Real> Cut<D> {
    #[inline(always)]
    fn keeps(&self, i: usize, x: D) -> bool {
        if self.all {
            return true;
        }
        let a = x.abs();
        a > self.thr || (a == self.thr && i <= self.last_tie)
    }
}

/// Histogram of 8-bit digit `(key >> shift) & 0xff` over the elements whose
/// key matches `prefix` on the bits above `shift + 8`.
fn digit_histogram<D: Real>(d: &[D], prefix: u64, shift: u32) -> [usize; 256] {
    let hi = shift + 8;
    let mask: u64 = if hi >= 64 { 0 } else { !((1u64 << hi) - 1) };
    let one = |c: &[D]| {
        let mut h = [0usize; 256];
        for x in c {
            let key = x.abs().bits();
            if key & mask == prefix {
                h[((key >> shift) & 0xff) as usize] += 1;
            }
        }
        h
    };
    let add = |mut a: [usize; 256], b: [usize; 256]| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        a
    };
    if d.len() >= PAR_MIN {
        d.par_chunks(1 << 16).map(one).reduce(|| [0usize; 256], add)
    } else {
        one(d)
    }
}

/// The k-th largest |x| (1-based) without copying or sorting: a most-
/// significant-digit radix select on the bit patterns of |x|, which order like
/// the values for non-negative floats (all finite here). One pass over the
/// tensor per 8 bits of key (4 for f32, 8 for f64), no scratch memory.
/// Returns (threshold, number of elements strictly above it).
fn kth_largest<D: Real>(d: &[D], k: usize) -> (D, usize) {
    let mut prefix = 0u64;
    let mut k_rem = k;
    let mut greater = 0usize;
    let mut shift = D::KEY_BITS;
    while shift > 0 {
        shift -= 8;
        let h = digit_histogram(d, prefix, shift);
        let mut above = 0usize;
        let mut chosen = 0usize;
        for digit in (0..256).rev() {
            if above + h[digit] >= k_rem {
                chosen = digit;
                break;
            }
            above += h[digit];
        }
        greater += above;
        k_rem -= above;
        prefix |= (chosen as u64) << shift;
    }
    (D::from_bits(prefix), greater)
}

fn plan_trim<D: Real>(d: &[D], density: f64) -> (Cut<D>, Trim) {
    let n = d.len();
    let k = if density >= 1.0 {
        n
    } else {
        ((density * n as f64) as usize).max(1).min(n)
    };
    if k >= n {
        let all = Cut {
            all: true,
            thr: D::ZERO,
            last_tie: 0,
        };
        let trim = Trim {
            kept: n,
            threshold: 0.0,
            tied: 0,
            tied_kept: 0,
        };
        return (all, trim);
    }
    let (thr, greater) = kth_largest(d, k);
    let need = k - greater; // ≥ 1: the k-th largest itself is tied with thr
                            // Ties at the threshold: keep the first `need` in index order. Count them
                            // per chunk (in parallel), then find the chunk holding the need-th one.
    const T: usize = 1 << 16;
    let count = |c: &[D]| c.iter().filter(|x| x.abs() == thr).count();
    let per_chunk: Vec<usize> = if n >= PAR_MIN {
        d.par_chunks(T).map(count).collect()
    } else {
        d.chunks(T).map(count).collect()
    };
    let tied: usize = per_chunk.iter().sum();
    let mut before = 0usize;
    let mut last_tie = 0usize;
    for (c, &cnt) in per_chunk.iter().enumerate() {
        if before + cnt >= need {
            let mut seen = before;
            for (j, x) in d[c * T..(c * T + T).min(n)].iter().enumerate() {
                if x.abs() == thr {
                    seen += 1;
                    if seen == need {
                        last_tie = c * T + j;
                        break;
                    }
                }
            }
            break;
        }
        before += cnt;
    }
    let cut = Cut {
        all: false,
        thr,
        last_tie,
    };
    let trim = Trim {
        kept: k,
        threshold: thr.to_f64(),
        tied,
        tied_kept: need,
    };
    (cut, trim)
}

#[inline(always)]
fn sign<D: Real>(x: D) -> i8 {
    if x > D::ZERO {
        1
    } else if x < D::ZERO {
        -1
    } else {
        0
    }
}

/// TIES-merging of one tensor, mergekit 0.1.5 semantics (`merge_method: ties`,
/// `consensus_method: sum`, `sparsification_method: magnitude`):
///
/// 1. **Trim**, each input separately: keep the `k = max(1, ⌊densityᵢ·n⌋)`
///    largest |δᵢ| of this tensor (density ≥ 1 keeps all); the rest become 0.
///    Ties at the threshold: every |δ| above it is kept, and of the elements
///    equal to it the lowest indices are kept until there are exactly k.
///    (mergekit takes `torch.argsort(|δ|, descending=True)[:k]`, an unstable
///    sort, so its choice among equal magnitudes is unspecified; only when a
///    tie straddles the cut can the two differ — [`Trim::straddles`].)
/// 2. **Weight**: `vᵢ = wᵢ·δ̂ᵢ`, before the election (weights vote).
/// 3. **Elect**: `γ = +1 if Σᵢ vᵢ ≥ 0 else −1` (an exact zero sum elects +1).
/// 4. **Disjoint merge**: keep `vᵢ` with `sign(vᵢ) == γ` (zeros never count);
///    `mixed = Σ kept vᵢ`, and with `normalize` divide by `Σ kept wᵢ` (a zero
///    divisor counts as 1) — for equal weights the paper's disjoint mean.
/// 5. `out = λ·mixed` (skipped when λ = 1).
///
/// `densities` has one entry per input, each in (0, 1]. The math runs in `D`
/// in the order above (wᵢ and λ rounded to `D` first), as mergekit's torch code
/// does. Returns how each input was trimmed.
pub fn ties<D: Real>(
    deltas: &[&[D]],
    weights: &[f64],
    densities: &[f64],
    lambda: f64,
    normalize: bool,
    out: &mut [D],
) -> Result<Vec<Trim>> {
    check_inputs(deltas, weights, out.len())?;
    check_finite_param("lambda", lambda)?;
    if densities.len() != deltas.len() {
        return Err(CoreError::Config(format!(
            "{} densities for {} task vectors",
            densities.len(),
            deltas.len()
        )));
    }
    for (i, &d) in densities.iter().enumerate() {
        if !(d > 0.0 && d <= 1.0) {
            return Err(CoreError::Config(format!(
                "density {i} must be in (0, 1], got {d}"
            )));
        }
    }
    check_deltas_finite(deltas)?;
    // One input at a time (each trim pass is parallel inside): no scratch.
    let plans: Vec<(Cut<D>, Trim)> = deltas
        .iter()
        .zip(densities)
        .map(|(d, &p)| plan_trim(d, p))
        .collect();
    let cuts: Vec<Cut<D>> = plans.iter().map(|p| p.0).collect();
    let w: Vec<D> = weights.iter().map(|&w| D::from_f64(w)).collect();
    let m = deltas.len();
    merge_elementwise(out, m, lambda, |i, v| {
        let mut total = D::ZERO;
        for t in 0..m {
            let x = deltas[t][i];
            // Trimmed elements are exact zeros; weighting zero is zero.
            v[t] = if cuts[t].keeps(i, x) {
                w[t] * x
            } else {
                D::ZERO
            };
            total = total + v[t];
        }
        let elected: i8 = if total >= D::ZERO { 1 } else { -1 };
        let mut mixed = D::ZERO;
        let mut div = D::ZERO;
        for t in 0..m {
            if sign(v[t]) == elected {
                mixed = mixed + v[t];
                div = div + w[t];
            }
        }
        if normalize {
            if div == D::ZERO {
                div = D::ONE;
            }
            mixed = mixed / div;
        }
        mixed
    })?;
    Ok(plans.into_iter().map(|p| p.1).collect())
}

// ---------------------------------------------------------------- TIES, paper variant

/// Exact k-th largest |x| over many slices (a whole model), streamed: the
/// caller feeds every tensor once per pass ([`GlobalSelect::observe`]) and
/// ends the pass ([`GlobalSelect::end_pass`]) until [`GlobalSelect::done`];
/// f32 needs 2 passes, f64 4 (16-bit radix digits of the bit patterns of |x|,
/// a 65 536-bin histogram, no copy of the data).
#[derive(Clone, Debug)]
pub struct GlobalSelect<D: Real> {
    k: usize,
    prefix: u64,
    shift: u32,
    k_rem: usize,
    hist: Vec<usize>,
    seen: usize,
    first_pass_total: Option<usize>,
    _d: std::marker::PhantomData<D>,
}

impl<D: Real> GlobalSelect<D> {
    /// Select the `k`-th largest (1-based, `k ≥ 1`).
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(CoreError::Config("k must be at least 1".into()));
        }
        Ok(Self {
            k,
            prefix: 0,
            shift: D::KEY_BITS - 16,
            k_rem: k,
            hist: vec![0; 1 << 16],
            seen: 0,
            first_pass_total: None,
            _d: std::marker::PhantomData,
        })
    }

    pub fn done(&self) -> bool {
        self.hist.is_empty()
    }

    /// Count one tensor (finite values only) into the current pass.
    pub fn observe(&mut self, d: &[D]) -> Result<()> {
        if self.done() {
            return Err(CoreError::Config("selection already finished".into()));
        }
        if let Some(j) = first_non_finite(d) {
            return Err(CoreError::Config(format!(
                "non-finite value at element {j}"
            )));
        }
        let hi = self.shift + 16;
        let mask: u64 = if hi >= 64 { 0 } else { !((1u64 << hi) - 1) };
        let (prefix, shift) = (self.prefix, self.shift);
        let one = |c: &[D]| {
            let mut h = vec![0usize; 1 << 16];
            for x in c {
                let key = x.abs().bits();
                if key & mask == prefix {
                    h[((key >> shift) & 0xffff) as usize] += 1;
                }
            }
            h
        };
        let add = |mut a: Vec<usize>, b: Vec<usize>| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        };
        let h = if d.len() >= 1 << 20 {
            d.par_chunks(1 << 19)
                .map(one)
                .reduce(|| vec![0; 1 << 16], add)
        } else {
            one(d)
        };
        for (x, y) in self.hist.iter_mut().zip(h) {
            *x += y;
        }
        self.seen += d.len();
        Ok(())
    }

    /// Fix the next 16 bits of the threshold. Every pass must see the same data.
    pub fn end_pass(&mut self) -> Result<()> {
        match self.first_pass_total {
            None => {
                if self.k > self.seen {
                    return Err(CoreError::Config(format!(
                        "k = {} but only {} values were observed",
                        self.k, self.seen
                    )));
                }
                self.first_pass_total = Some(self.seen);
            }
            Some(t) if t != self.seen => {
                return Err(CoreError::Config(format!(
                    "pass saw {} values, the first pass {t}",
                    self.seen
                )))
            }
            _ => {}
        }
        let mut above = 0usize;
        let mut chosen = 0usize;
        for digit in (0..1usize << 16).rev() {
            if above + self.hist[digit] >= self.k_rem {
                chosen = digit;
                break;
            }
            above += self.hist[digit];
        }
        self.k_rem -= above;
        self.prefix |= (chosen as u64) << self.shift;
        self.seen = 0;
        if self.shift == 0 {
            self.hist = Vec::new();
        } else {
            self.shift -= 16;
            self.hist.iter_mut().for_each(|x| *x = 0);
        }
        Ok(())
    }

    /// The k-th largest |x| once [`GlobalSelect::done`].
    pub fn threshold(&self) -> Option<D> {
        self.done().then(|| D::from_bits(self.prefix))
    }
}

/// How many elements the TIES paper's trim keeps out of `n` at `density`
/// (`topk_values_mask`: `kthvalue(|M|, n − int(n·K))`, keep `|M| ≥` it, i.e.
/// the `int(n·K) + 1` largest plus ties), capped at `n`.
pub fn paper_keep_count(n: usize, density: f64) -> usize {
    ((density * n as f64) as usize + 1).min(n)
}

#[inline(always)]
fn paper_v<D: Real>(x: D, w: D, thr: D) -> D {
    if x.abs() >= thr {
        w * x
    } else {
        D::ZERO
    }
}

/// Σ over the elements of `sign(Σₜ wₜ·τ̂ₜ)` (τ̂ₜ: |τₜ| ≥ `thresholds[t]`),
/// summed over all tensors by the caller: its sign is the paper's "majority"
/// sign given to elements whose sum is exactly 0 (`resolve_zero_signs`).
pub fn paper_sign_sum<D: Real>(deltas: &[&[D]], weights: &[f64], thresholds: &[D]) -> Result<i64> {
    let n = deltas.first().map_or(0, |d| d.len());
    check_inputs(deltas, weights, n)?;
    if thresholds.len() != deltas.len() {
        return Err(CoreError::Config("one threshold per task vector".into()));
    }
    check_deltas_finite(deltas)?;
    let w: Vec<D> = weights.iter().map(|&w| D::from_f64(w)).collect();
    let one = |range: std::ops::Range<usize>| -> i64 {
        let mut acc = 0i64;
        for i in range {
            let mut s = D::ZERO;
            for t in 0..deltas.len() {
                s = s + paper_v(deltas[t][i], w[t], thresholds[t]);
            }
            acc += sign(s) as i64;
        }
        acc
    };
    Ok(if n >= PAR_MIN {
        (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| one(c * CHUNK..((c + 1) * CHUNK).min(n)))
            .sum()
    } else {
        one(0..n)
    })
}

/// TIES as the paper's code does it (`merge_utils.py`, `topk…_mass_dis-mean`),
/// for one tensor, given the model-wide trim `thresholds` (one per input, from
/// [`GlobalSelect`] with k = [`paper_keep_count`] over all tensors; 0 keeps
/// everything) and the model-wide `majority` sign (sign of the sum of
/// [`paper_sign_sum`] over all tensors):
///
/// `vₜ = wₜ·τₜ` where `|τₜ| ≥ thresholdₜ` (ties at the threshold all kept),
/// else 0; `γ = sign(Σₜ vₜ)`, and `majority` where that is 0; keep `vₜ > 0` if
/// `γ > 0`, else `vₜ < 0`; `out = λ · Σ kept / max(1, #kept)` (mean over the
/// agreeing inputs, not over their weights). The paper has no weights: pass 1s.
pub fn ties_paper<D: Real>(
    deltas: &[&[D]],
    weights: &[f64],
    thresholds: &[D],
    majority: i8,
    lambda: f64,
    out: &mut [D],
) -> Result<()> {
    check_inputs(deltas, weights, out.len())?;
    check_finite_param("lambda", lambda)?;
    if thresholds.len() != deltas.len() {
        return Err(CoreError::Config("one threshold per task vector".into()));
    }
    check_deltas_finite(deltas)?;
    let w: Vec<D> = weights.iter().map(|&w| D::from_f64(w)).collect();
    let m = deltas.len();
    merge_elementwise(out, m, lambda, |i, v| {
        let mut s = D::ZERO;
        for t in 0..m {
            v[t] = paper_v(deltas[t][i], w[t], thresholds[t]);
            s = s + v[t];
        }
        let mut g = sign(s);
        if g == 0 {
            g = majority.signum();
        }
        let (mut sum, mut count) = (D::ZERO, 0u32);
        for &x in v.iter() {
            if (g > 0 && x > D::ZERO) || (g <= 0 && x < D::ZERO) {
                sum = sum + x;
                count += 1;
            }
        }
        if count > 1 {
            sum / D::from_f64(count as f64)
        } else {
            sum
        }
    })
}

// ---------------------------------------------------------------- diff stats

/// `‖a‖₂`, `‖b‖₂` and `a·b` of one tensor pair, accumulated in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairStats {
    pub sq_a: f64,
    pub sq_b: f64,
    pub dot: f64,
}

impl PairStats {
    pub fn norm_a(&self) -> f64 {
        self.sq_a.sqrt()
    }
    pub fn norm_b(&self) -> f64 {
        self.sq_b.sqrt()
    }
    /// Cosine similarity; `None` when either norm is 0.
    pub fn cosine(&self) -> Option<f64> {
        let d = self.norm_a() * self.norm_b();
        (d > 0.0).then(|| self.dot / d)
    }
    /// `‖a − b‖₂` from the same sums (clamped at 0 against cancellation).
    pub fn norm_diff(&self) -> f64 {
        (self.sq_a + self.sq_b - 2.0 * self.dot).max(0.0).sqrt()
    }
    pub fn merge(self, o: PairStats) -> PairStats {
        PairStats {
            sq_a: self.sq_a + o.sq_a,
            sq_b: self.sq_b + o.sq_b,
            dot: self.dot + o.dot,
        }
    }
}

/// Sums of squares and the dot product of two equally long tensors (chunked
/// partial sums, so the rounding error grows with the chunk size, not n).
pub fn pair_stats<A: Scalar, B: Scalar>(a: &[A], b: &[B]) -> Result<PairStats> {
    if a.len() != b.len() {
        return Err(CoreError::Shape(format!(
            "a has {} elements, b {}",
            a.len(),
            b.len()
        )));
    }
    let one = |(a, b): (&[A], &[B])| {
        let mut s = PairStats::default();
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x.as_f64(), y.as_f64());
            s.sq_a += x * x;
            s.sq_b += y * y;
            s.dot += x * y;
        }
        s
    };
    const C: usize = 4096;
    Ok(if a.len() >= PAR_MIN {
        a.par_chunks(C)
            .zip(b.par_chunks(C))
            .map(one)
            .reduce(PairStats::default, PairStats::merge)
    } else {
        a.chunks(C)
            .zip(b.chunks(C))
            .map(one)
            .fold(PairStats::default(), PairStats::merge)
    })
}
