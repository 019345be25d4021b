//! Low-rank factors of a weight delta: the truncated SVD `Δ ≈ B·A` that a LoRA
//! adapter stores (`lora_B` is `m × r`, `lora_A` is `r × n`, Δ is `m × n`).
//!
//! The right (or left, for a wide Δ) singular vectors come from the
//! eigen-decomposition of the Gram matrix of the smaller side in f64. The
//! factors are then `B = Δ·V_r·Σ_r^{-1/2}` and `A = Σ_r^{1/2}·V_rᵀ`, so `B·A`
//! is Δ projected onto its top-r singular subspace (the Eckart–Young optimum)
//! whatever the precision of the eigenvalues, and at full rank it is Δ itself
//! up to the f32 rounding of the stored factors. Both factors carry √σ, so
//! neither grows much larger than the other in 16-bit serving dtypes.
//!
//! The reported error is measured, not predicted: `‖Δ − B·A‖_F / ‖Δ‖_F` with
//! the f32 factors as stored.

mod eigen;
#[cfg(test)]
mod tests;

pub use eigen::symmetric_eigen;

use crate::error::{CoreError, Result};

/// How many singular directions to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    /// Exactly this many, `1 ≤ r ≤ min(m, n)`.
    Rank(usize),
    /// The fewest that keep at least this share of `‖Δ‖²_F`, in `(0, 1]`.
    Energy(f64),
}

/// A rank-`rank` factorisation of an `m × n` delta.
#[derive(Clone, Debug)]
pub struct LowRank {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// `rank × cols`, row-major (PEFT's `lora_A.weight`).
    pub a: Vec<f32>,
    /// `rows × rank`, row-major (PEFT's `lora_B.weight`).
    pub b: Vec<f32>,
    /// Every singular value of Δ, descending (`min(m, n)` of them).
    pub singular_values: Vec<f64>,
    /// Share of `‖Δ‖²_F` in the kept singular values (1 for a zero Δ).
    pub energy_kept: f64,
    /// `‖Δ − B·A‖_F / ‖Δ‖_F`, measured with the f32 factors (0 for a zero Δ).
    pub rel_error: f64,
    /// `‖Δ‖_F`.
    pub norm: f64,
}

/// Check a rule against a matrix's shape before any work.
pub fn check_rule(rule: RankRule, rows: usize, cols: usize, max_rank: Option<usize>) -> Result<()> {
    let full = rows.min(cols);
    match rule {
        RankRule::Rank(r) if r == 0 || r > full => Err(CoreError::Config(format!(
            "rank {r} for a {rows} x {cols} matrix: it must be in 1..={full}"
        ))),
        RankRule::Energy(e) if !(e > 0.0 && e <= 1.0) => {
            Err(CoreError::Config(format!("energy {e}: it must be in (0, 1]")))
        }
        _ => match max_rank {
            Some(0) => Err(CoreError::Config("max_rank 0: it must be at least 1".into())),
            _ => Ok(()),
        },
    }
}

/// The rank a rule picks from the singular values (descending), capped by `max_rank`.
pub fn choose_rank(singular_values: &[f64], rule: RankRule, max_rank: Option<usize>) -> usize {
    let energy: Vec<f64> = singular_values.iter().map(|s| s * s).collect();
    let total: f64 = energy.iter().sum();
    let r = match rule {
        RankRule::Rank(r) => r.min(singular_values.len()),
        RankRule::Energy(_) if total <= 0.0 => 0,
        RankRule::Energy(e) => {
            let want = e * total;
            let mut acc = 0.0;
            let mut r = singular_values.len();
            for (i, x) in energy.iter().enumerate() {
                acc += x;
                // a relative slack so that energy = 1 stops at the last non-zero value
                if acc >= want * (1.0 - 1e-12) {
                    r = i + 1;
                    break;
                }
            }
            r
        }
    };
    max_rank.map_or(r, |k| r.min(k))
}

/// Factor the `rows × cols` row-major delta (f64, finite) by `rule`, capped at `max_rank`.
pub fn low_rank(delta: &[f64], rows: usize, cols: usize, rule: RankRule, max_rank: Option<usize>) -> Result<LowRank> {
    if delta.len() != rows * cols || rows == 0 || cols == 0 {
        return Err(CoreError::Shape(format!(
            "{} elements for a {rows} x {cols} matrix",
            delta.len()
        )));
    }
    check_rule(rule, rows, cols, max_rank)?;
    if let Some(i) = delta.iter().position(|x| !x.is_finite()) {
        return Err(CoreError::Config(format!("element {i} of the delta is {}", delta[i])));
    }
    let norm = delta.iter().map(|x| x * x).sum::<f64>().sqrt();
    // The Gram matrix of the smaller side: ΔᵀΔ (cols²) for a tall Δ, ΔΔᵀ (rows²) for a wide one.
    let tall = rows >= cols;
    let k = rows.min(cols);
    let mut gram = vec![0f64; k * k];
    let par = gemm::Parallelism::Rayon(0);
    unsafe {
        if tall {
            // (k × k) = Δᵀ (k × rows) · Δ (rows × k)
            gemm::gemm(
                k, k, rows, gram.as_mut_ptr(), 1, k as isize, false,
                delta.as_ptr(), k as isize, 1, // Δᵀ: element (i, l) = Δ[l·cols + i]
                delta.as_ptr(), 1, cols as isize,
                0.0, 1.0, false, false, false, par,
            );
        } else {
            // (k × k) = Δ (k × cols) · Δᵀ (cols × k)
            gemm::gemm(
                k, k, cols, gram.as_mut_ptr(), 1, k as isize, false,
                delta.as_ptr(), 1, cols as isize,
                delta.as_ptr(), cols as isize, 1,
                0.0, 1.0, false, false, false, par,
            );
        }
    }
    // Exact symmetry: gemm's two triangles may differ in the last bit.
    for i in 0..k {
        for j in 0..i {
            let s = 0.5 * (gram[i * k + j] + gram[j * k + i]);
            gram[i * k + j] = s;
            gram[j * k + i] = s;
        }
    }
    let (values, vectors) = symmetric_eigen(&gram, k);
    let singular_values: Vec<f64> = values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let rank = choose_rank(&singular_values, rule, max_rank);
    // Directions with σ = 0 (to rounding) carry nothing: never divide by them.
    let floor = singular_values.first().copied().unwrap_or(0.0) * f64::EPSILON * (k as f64);
    let rank = singular_values[..rank].iter().take_while(|&&s| s > floor).count();
    let total: f64 = singular_values.iter().map(|s| s * s).sum();
    let kept: f64 = singular_values[..rank].iter().map(|s| s * s).sum();
    let energy_kept = if total > 0.0 { (kept / total).min(1.0) } else { 1.0 };

    // Projection of Δ on the kept directions: P = Δ·V_r (rows × r) for a tall Δ,
    // P = U_rᵀ·Δ (r × cols) for a wide one.
    let mut a = vec![0f32; rank * cols];
    let mut b = vec![0f32; rows * rank];
    if rank > 0 {
        let basis = &vectors[..rank * k]; // r × k, each row a unit vector
        let p = if tall {
            let mut p = vec![0f64; rows * rank];
            unsafe {
                gemm::gemm(
                    rows, rank, cols, p.as_mut_ptr(), 1, rank as isize, false,
                    delta.as_ptr(), 1, cols as isize,
                    basis.as_ptr(), k as isize, 1, // V_r (cols × r): element (l, j) = basis[j·k + l]
                    0.0, 1.0, false, false, false, par,
                );
            }
            p
        } else {
            let mut p = vec![0f64; rank * cols];
            unsafe {
                gemm::gemm(
                    rank, cols, rows, p.as_mut_ptr(), 1, cols as isize, false,
                    basis.as_ptr(), 1, k as isize, // U_rᵀ (r × rows)
                    delta.as_ptr(), 1, cols as isize,
                    0.0, 1.0, false, false, false, par,
                );
            }
            p
        };
        // Both factors carry √σ: tall, B = P·Σ^{-1/2} and A = Σ^{1/2}·V_rᵀ;
        // wide, A = Σ^{-1/2}·P and B = U_r·Σ^{1/2}.
        for (j, sigma) in singular_values[..rank].iter().enumerate() {
            let root = sigma.sqrt();
            for i in 0..rows {
                let x = if tall { p[i * rank + j] / root } else { basis[j * k + i] * root };
                b[i * rank + j] = x as f32;
            }
            for l in 0..cols {
                let x = if tall { basis[j * k + l] * root } else { p[j * cols + l] / root };
                a[j * cols + l] = x as f32;
            }
        }
    }
    let rel_error = if norm > 0.0 { residual_norm(delta, &a, &b, rows, cols, rank) / norm } else { 0.0 };
    Ok(LowRank { rows, cols, rank, a, b, singular_values, energy_kept, rel_error, norm })
}

/// `‖Δ − B·A‖_F` in f64 with the f32 factors as given.
pub fn residual_norm(delta: &[f64], a: &[f32], b: &[f32], rows: usize, cols: usize, rank: usize) -> f64 {
    if rank == 0 {
        return delta.iter().map(|x| x * x).sum::<f64>().sqrt();
    }
    let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    let mut r = delta.to_vec();
    unsafe {
        // r := Δ − B·A
        gemm::gemm(
            rows, cols, rank, r.as_mut_ptr(), 1, cols as isize, true,
            b64.as_ptr(), 1, rank as isize,
            a64.as_ptr(), 1, cols as isize,
            1.0, -1.0, false, false, false, gemm::Parallelism::Rayon(0),
        );
    }
    r.iter().map(|x| x * x).sum::<f64>().sqrt()
}
