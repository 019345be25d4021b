//! Counter-based random numbers: every value is a pure function of (seed, index).
//!
//! Apollo regenerates its projection from a seed instead of storing it, and the
//! CUDA path must be able to produce the same matrix without a host round-trip, so
//! no sequential generator state is allowed here: element `k` of a stream is
//! `f(seed, k)`. The mixing function is SplitMix64's finaliser, which passes
//! BigCrush when fed a counter and is a handful of integer ops on any device.

/// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The `index`-th 64 random bits of stream `seed`: exactly SplitMix64's
/// output number `index` when seeded with `seed`.
#[inline(always)]
pub fn bits(seed: u64, index: u64) -> u64 {
    mix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Derive an independent stream seed from a parent seed and a label (e.g. the
/// projection refresh period): keeps seeds of different periods unrelated.
#[inline]
pub fn derive(seed: u64, label: u64) -> u64 {
    mix64(seed.wrapping_add(GOLDEN).wrapping_mul(3) ^ mix64(label ^ 0x5851_f42d_4c95_7f2d))
}

/// Two independent standard normals from one 64-bit draw (Box–Muller).
///
/// `u1` takes the high 24 bits mapped to (0, 1] so that `ln(u1)` is finite;
/// `u2` the next 24 bits mapped to [0, 1).
#[inline(always)]
pub fn normal_pair(seed: u64, index: u64) -> (f32, f32) {
    let b = bits(seed, index);
    let u1 = (((b >> 40) as u32) + 1) as f32 * (1.0 / 16_777_216.0);
    let u2 = (((b >> 16) & 0xff_ffff) as u32) as f32 * (1.0 / 16_777_216.0);
    let r = (-2.0 * fast_ln(u1)).sqrt();
    let (s, c) = sincos_2pi(u2);
    (r * c, r * s)
}

/// Fill `out` with i.i.d. N(0, std²) values of stream `seed` (element k is
/// component k%2 of pair k/2, so any sub-range can be regenerated alone).
pub fn fill_normal(seed: u64, std: f32, out: &mut [f32]) {
    fill_normal_from(seed, std, 0, out)
}

/// Like [`fill_normal`] but for elements `start..start+out.len()` of the stream.
pub fn fill_normal_from(seed: u64, std: f32, start: usize, out: &mut [f32]) {
    // The same code compiled for wider vectors when the CPU has them: the
    // generator is pure integer/float arithmetic, so results are identical.
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            return unsafe { fill_normal_avx512(seed, std, start, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return unsafe { fill_normal_avx2(seed, std, start, out) };
        }
    }
    fill_normal_generic(seed, std, start, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn fill_normal_avx512(seed: u64, std: f32, start: usize, out: &mut [f32]) {
    fill_normal_generic(seed, std, start, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_normal_avx2(seed: u64, std: f32, start: usize, out: &mut [f32]) {
    fill_normal_generic(seed, std, start, out)
}

#[inline(always)]
fn fill_normal_generic(seed: u64, std: f32, start: usize, out: &mut [f32]) {
    let mut k = start;
    let mut i = 0;
    if k % 2 == 1 && i < out.len() {
        out[i] = normal_pair(seed, (k / 2) as u64).1 * std;
        i += 1;
        k += 1;
    }
    let first_pair = (k / 2) as u64;
    let body = &mut out[i..];
    let whole = body.len() / 2 * 2;
    for (j, pair) in body[..whole].chunks_exact_mut(2).enumerate() {
        let (a, b) = normal_pair(seed, first_pair + j as u64);
        pair[0] = a * std;
        pair[1] = b * std;
    }
    i += whole;
    k += whole;
    if i < out.len() {
        out[i] = normal_pair(seed, (k / 2) as u64).0 * std;
    }
}

/// Natural log for x in (0, 1], branch-free so loops vectorise.
/// x = 2^e · m with m in [√½, √2); ln m = 2·atanh(t), t = (m−1)/(m+1), |t| < 0.172.
/// The odd series to t^11 is accurate to < 2e-8 relative: well below f32 rounding.
#[inline(always)]
pub fn fast_ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let poly = 1.0
        + t2 * (1.0 / 3.0
            + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0 + t2 * (1.0 / 11.0)))));
    2.0 * t * poly + e as f32 * std::f32::consts::LN_2
}

/// (sin 2πu, cos 2πu) for u in [0, 1): quadrant reduction and short Taylor/minimax
/// polynomials on [−π/4, π/4]; absolute error < 1e-7.
#[inline(always)]
pub fn sincos_2pi(u: f32) -> (f32, f32) {
    // Nearest quarter turn q and the remainder angle a in [−π/4, π/4].
    let v = u * 4.0;
    let q = (v + 0.5).floor();
    let a = (v - q) * std::f32::consts::FRAC_PI_2;
    let a2 = a * a;
    let s = a
        * (1.0
            + a2 * (-1.0 / 6.0
                + a2 * (1.0 / 120.0 + a2 * (-1.0 / 5040.0 + a2 * (1.0 / 362_880.0)))));
    let c = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24.0 + a2 * (-1.0 / 720.0 + a2 * (1.0 / 40_320.0))));
    // Rotate by q quarter turns, branch-free so the caller's loop vectorises:
    // q=0 → (s, c), 1 → (c, −s), 2 → (−s, −c), 3 → (−c, s).
    let qi = q as i32;
    let swap = qi & 1 != 0;
    let (a, b) = if swap { (c, s) } else { (s, c) };
    let a = if qi & 2 != 0 { -a } else { a };
    let b = if (qi + 1) & 2 != 0 { -b } else { b };
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_std() {
        let mut worst = 0f32;
        for i in 1..=100_000u32 {
            let x = i as f32 / 100_000.0;
            let err = (fast_ln(x) - x.ln()).abs() / x.ln().abs().max(1e-3);
            worst = worst.max(err);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(fast_ln(1.0), 0.0);
    }

    #[test]
    fn sincos_matches_std() {
        for i in 0..100_000u32 {
            let u = i as f32 / 100_000.0;
            let (s, c) = sincos_2pi(u);
            let ang = (u as f64) * std::f64::consts::TAU;
            assert!((s as f64 - ang.sin()).abs() < 5e-7, "sin at {u}");
            assert!((c as f64 - ang.cos()).abs() < 5e-7, "cos at {u}");
        }
    }

    #[test]
    fn normals_have_unit_moments_and_are_reproducible() {
        let mut v = vec![0f32; 400_000];
        fill_normal(42, 1.0, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        assert!(v.iter().all(|x| x.is_finite()));
        let mut w = vec![0f32; 400_000];
        fill_normal(42, 1.0, &mut w);
        assert_eq!(v, w);
        fill_normal(43, 1.0, &mut w);
        assert_ne!(v, w);
    }

    #[test]
    fn sub_ranges_regenerate_identically() {
        let mut full = vec![0f32; 101];
        fill_normal(7, 0.5, &mut full);
        for start in [0usize, 1, 2, 37, 100] {
            let mut part = vec![0f32; 101 - start];
            fill_normal_from(7, 0.5, start, &mut part);
            assert_eq!(&full[start..], &part[..], "start {start}");
        }
    }
}
