use super::*;
use crate::rng;

fn normal(seed: u64, n: usize) -> Vec<f64> {
    let mut v = vec![0f32; n];
    rng::fill_normal(seed, 1.0, &mut v);
    v.into_iter().map(f64::from).collect()
}

/// `k` orthonormal vectors of length `len` (rows), by Gram–Schmidt on Gaussians.
fn orthonormal(seed: u64, k: usize, len: usize) -> Vec<f64> {
    let mut q = normal(seed, k * len);
    for i in 0..k {
        for _ in 0..2 {
            for j in 0..i {
                let dot: f64 = (0..len).map(|l| q[i * len + l] * q[j * len + l]).sum();
                for l in 0..len {
                    q[i * len + l] -= dot * q[j * len + l];
                }
            }
        }
        let n: f64 = (0..len).map(|l| q[i * len + l].powi(2)).sum::<f64>().sqrt();
        for l in 0..len {
            q[i * len + l] /= n;
        }
    }
    q
}

/// Δ = U·diag(s)·Vᵀ with known singular values.
fn with_spectrum(seed: u64, rows: usize, cols: usize, s: &[f64]) -> Vec<f64> {
    let k = s.len();
    let u = orthonormal(seed, k, rows);
    let v = orthonormal(seed + 7, k, cols);
    let mut d = vec![0f64; rows * cols];
    for j in 0..k {
        for i in 0..rows {
            let us = u[j * rows + i] * s[j];
            for l in 0..cols {
                d[i * cols + l] += us * v[j * cols + l];
            }
        }
    }
    d
}

fn product(f: &LowRank) -> Vec<f64> {
    let mut out = vec![0f64; f.rows * f.cols];
    for i in 0..f.rows {
        for j in 0..f.rank {
            let b = f.b[i * f.rank + j] as f64;
            for l in 0..f.cols {
                out[i * f.cols + l] += b * f.a[j * f.cols + l] as f64;
            }
        }
    }
    out
}

fn rel_diff(x: &[f64], y: &[f64]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = y.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[test]
fn eigen_of_a_known_symmetric_matrix() {
    // [[2,1,0],[1,2,1],[0,1,2]]: eigenvalues 2+√2, 2, 2−√2
    let a = [2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0];
    let (vals, vecs) = symmetric_eigen(&a, 3);
    let want = [2.0 + 2f64.sqrt(), 2.0, 2.0 - 2f64.sqrt()];
    for (v, w) in vals.iter().zip(want) {
        assert!((v - w).abs() < 1e-13, "{vals:?}");
    }
    for i in 0..3 {
        let x = &vecs[i * 3..i * 3 + 3];
        for r in 0..3 {
            let ax: f64 = (0..3).map(|c| a[r * 3 + c] * x[c]).sum();
            assert!((ax - vals[i] * x[r]).abs() < 1e-13);
        }
    }
}

#[test]
fn eigen_vectors_are_orthonormal_on_a_random_gram_matrix() {
    let n = 40;
    let g = normal(3, n * n);
    let mut s = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = g[i * n + j] + g[j * n + i];
        }
    }
    let (vals, vecs) = symmetric_eigen(&s, n);
    assert!(vals.windows(2).all(|w| w[0] >= w[1]), "descending");
    for i in 0..n {
        for j in 0..n {
            let dot: f64 = (0..n).map(|l| vecs[i * n + l] * vecs[j * n + l]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-12, "({i},{j}) {dot}");
        }
        let x = &vecs[i * n..(i + 1) * n];
        for r in 0..n {
            let sx: f64 = (0..n).map(|c| s[r * n + c] * x[c]).sum();
            assert!((sx - vals[i] * x[r]).abs() < 1e-10);
        }
    }
}

#[test]
fn recovers_known_singular_values_tall_and_wide() {
    let s = [9.0, 5.0, 3.0, 1.0, 0.5, 0.25];
    for (rows, cols) in [(48, 20), (20, 48), (24, 24)] {
        let d = with_spectrum(11, rows, cols, &s);
        let f = low_rank(&d, rows, cols, RankRule::Rank(6), None).unwrap();
        assert_eq!(f.singular_values.len(), rows.min(cols));
        for (got, want) in f.singular_values.iter().zip(s) {
            assert!((got - want).abs() < 1e-9, "{rows}x{cols}: {:?}", f.singular_values);
        }
        assert!(f.singular_values[6..].iter().all(|&x| x < 1e-6));
    }
}

#[test]
fn full_rank_reproduces_the_delta_to_f32_rounding() {
    for (rows, cols) in [(64, 24), (24, 64), (33, 33)] {
        let d = normal(5, rows * cols);
        let full = rows.min(cols);
        let f = low_rank(&d, rows, cols, RankRule::Rank(full), None).unwrap();
        assert_eq!(f.rank, full);
        let err = rel_diff(&product(&f), &d);
        assert!(err < 1e-6, "{rows}x{cols}: {err}");
        assert!((f.rel_error - err).abs() < 1e-9, "reported {} measured {err}", f.rel_error);
        assert!((f.energy_kept - 1.0).abs() < 1e-12);
    }
}

#[test]
fn truncation_error_is_the_eckart_young_tail() {
    let s = [8.0, 4.0, 2.0, 1.0];
    let d = with_spectrum(21, 30, 50, &s);
    let f = low_rank(&d, 30, 50, RankRule::Rank(2), None).unwrap();
    let tail = ((4.0f64 + 1.0) / (64.0 + 16.0 + 4.0 + 1.0)).sqrt();
    assert!((f.rel_error - tail).abs() < 1e-6, "{} vs {tail}", f.rel_error);
    assert!((rel_diff(&product(&f), &d) - tail).abs() < 1e-6);
    assert!((f.energy_kept - 80.0 / 85.0).abs() < 1e-9);
}

#[test]
fn energy_picks_the_fewest_directions_that_keep_the_share() {
    let s = [8.0, 4.0, 2.0, 1.0]; // energies 64, 16, 4, 1 of 85
    let d = with_spectrum(31, 20, 12, &s);
    let pick = |e: f64| low_rank(&d, 20, 12, RankRule::Energy(e), None).unwrap().rank;
    assert_eq!(pick(0.5), 1);
    assert_eq!(pick(64.0 / 85.0), 1);
    assert_eq!(pick(0.76), 2);
    assert_eq!(pick(0.98), 3);
    assert_eq!(pick(0.99), 4, "84 of 85 is 0.988");
    assert_eq!(pick(1.0), 4, "energy 1 keeps every non-zero direction, not the numerical zeros");
    let capped = low_rank(&d, 20, 12, RankRule::Energy(1.0), Some(2)).unwrap();
    assert_eq!(capped.rank, 2);
    assert_eq!(capped.a.len(), 2 * 12);
    assert_eq!(capped.b.len(), 20 * 2);
}

#[test]
fn a_zero_delta_has_rank_zero_and_no_error() {
    let d = vec![0f64; 6 * 4];
    let f = low_rank(&d, 6, 4, RankRule::Energy(0.99), None).unwrap();
    assert_eq!((f.rank, f.rel_error, f.energy_kept, f.norm), (0, 0.0, 1.0, 0.0));
    let f = low_rank(&d, 6, 4, RankRule::Rank(2), None).unwrap();
    assert_eq!(f.rank, 0, "no direction with sigma 0 is kept");
}

#[test]
fn bad_rules_and_inputs_are_refused() {
    let d = normal(1, 6 * 4);
    for rule in [RankRule::Rank(0), RankRule::Rank(5), RankRule::Energy(0.0), RankRule::Energy(1.5),
                 RankRule::Energy(-0.1), RankRule::Energy(f64::NAN)] {
        assert!(matches!(low_rank(&d, 6, 4, rule, None), Err(CoreError::Config(_))), "{rule:?}");
    }
    assert!(low_rank(&d, 6, 4, RankRule::Rank(1), Some(0)).is_err());
    assert!(matches!(low_rank(&d, 5, 4, RankRule::Rank(1), None), Err(CoreError::Shape(_))));
    let mut bad = d.clone();
    bad[7] = f64::INFINITY;
    assert!(low_rank(&bad, 6, 4, RankRule::Rank(1), None).is_err());
    bad[7] = f64::NAN;
    assert!(low_rank(&bad, 6, 4, RankRule::Rank(1), None).is_err());
}

#[test]
fn factors_are_balanced() {
    let d = with_spectrum(41, 16, 10, &[100.0, 1.0]);
    let f = low_rank(&d, 16, 10, RankRule::Rank(2), None).unwrap();
    for j in 0..2 {
        let na: f64 = (0..10).map(|l| (f.a[j * 10 + l] as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = (0..16).map(|i| (f.b[i * 2 + j] as f64).powi(2)).sum::<f64>().sqrt();
        assert!((na - nb).abs() < 1e-5 * na, "direction {j}: |a| {na} |b| {nb}");
    }
}
