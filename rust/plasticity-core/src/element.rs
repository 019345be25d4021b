//! Weight element types: f32, bf16 and f16 weights, all optimizer math in f32.

use half::{bf16, f16};

/// The dtypes a weight or gradient buffer may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
}

/// A storable weight element. Math happens in f32; only loads and stores convert.
pub trait Element: Copy + Send + Sync + bytemuck::Pod + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    /// Round to nearest even.
    fn from_f32(x: f32) -> Self;
    /// Stochastic rounding with 32 random bits: unbiased, so updates far below
    /// one ulp still move the weight on average (plain rounding drops them: at
    /// lr 1e-5 most bf16 updates would vanish). f32 ignores the bits.
    fn from_f32_stochastic(x: f32, _random: u32) -> Self {
        Self::from_f32(x)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// `Element` for a 16-bit `half` type: nearest rounding is the type's own
/// `from_f32`, stochastic rounding the given function.
macro_rules! impl_half_element {
    ($t:ident, $dtype:expr, $stochastic:ident) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                $t::from_f32(x)
            }
            #[inline(always)]
            fn from_f32_stochastic(x: f32, random: u32) -> Self {
                $stochastic(x, random)
            }
        }
    };
}
impl_half_element!(bf16, DType::BF16, bf16_stochastic);
impl_half_element!(f16, DType::F16, f16_stochastic);

#[inline(always)]
fn bf16_stochastic(x: f32, random: u32) -> bf16 {
    // bf16 is the top half of an f32: add 16 random bits below the cut and
    // truncate. NaN/Inf pass through unchanged.
    if !x.is_finite() {
        return bf16::from_f32(x);
    }
    let b = x.to_bits().wrapping_add(random >> 16);
    bf16::from_bits((b >> 16) as u16)
}

#[inline(always)]
fn f16_stochastic(x: f32, random: u32) -> f16 {
    // Pick the lower or upper f16 neighbour with probability proportional
    // to proximity.
    let lo = f16::from_f32(x);
    let lof = lo.to_f32();
    if lof == x || !x.is_finite() {
        return lo;
    }
    let (down, up) = if lof < x {
        (lo, next_toward(lo, f32::INFINITY))
    } else {
        (next_toward(lo, f32::NEG_INFINITY), lo)
    };
    let (d, u) = (down.to_f32(), up.to_f32());
    let p_up = (x - d) / (u - d);
    if ((random >> 8) as f32) * (1.0 / 16_777_216.0) < p_up {
        up
    } else {
        down
    }
}

fn next_toward(x: f16, dir: f32) -> f16 {
    let b = x.to_bits();
    let v = x.to_f32();
    let up = dir > v;
    let nb = if v == 0.0 {
        if up {
            0x0001
        } else {
            0x8001
        }
    } else if (v > 0.0) == up {
        b + 1
    } else {
        b - 1
    };
    f16::from_bits(nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_bf16_is_unbiased() {
        let x = 1.0f32 + 1e-4; // far below one bf16 ulp (2^-7) above 1.0
        let n = 200_000u32;
        let mean: f64 = (0..n)
            .map(|i| {
                bf16::from_f32_stochastic(x, crate::rng::bits(9, i as u64) as u32).to_f32() as f64
            })
            .sum::<f64>()
            / n as f64;
        assert!((mean - x as f64).abs() < 2e-5, "mean {mean}");
        assert_eq!(
            bf16::from_f32(x).to_f32(),
            1.0,
            "nearest rounding drops the update"
        );
    }

    #[test]
    fn stochastic_f16_is_unbiased_and_brackets() {
        for &x in &[1.0f32 + 1e-4, -3.3e-3, 1234.567] {
            let n = 100_000u32;
            let mut sum = 0f64;
            for i in 0..n {
                let y = f16::from_f32_stochastic(x, crate::rng::bits(3, i as u64) as u32).to_f32();
                sum += y as f64;
            }
            let mean = sum / n as f64;
            let ulp = (f16::from_f32(x).to_f32() as f64).abs() * 1e-3;
            assert!(
                (mean - x as f64).abs() < ulp.max(1e-7) * 3.0,
                "x {x} mean {mean}"
            );
        }
    }

    #[test]
    fn non_finite_passes_through() {
        assert!(bf16::from_f32_stochastic(f32::NAN, 123).to_f32().is_nan());
        assert_eq!(
            bf16::from_f32_stochastic(f32::INFINITY, u32::MAX).to_f32(),
            f32::INFINITY
        );
    }
}
