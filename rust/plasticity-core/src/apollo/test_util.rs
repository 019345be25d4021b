//! Fixtures shared by the Apollo test modules (whole-matrix and sharded).

use super::{Geometry, MatrixState};
use crate::rng;

/// `len` draws from N(0, std²), reproducible from `seed`.
pub(super) fn randn(seed: u64, len: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; len];
    rng::fill_normal(seed, std, &mut v);
    v
}

/// Zeroed first and second moments sized for `geo`.
pub(super) fn zero_moments(geo: &Geometry) -> (Vec<f32>, Vec<f32>) {
    (vec![0f32; geo.moment_len()], vec![0f32; geo.moment_len()])
}

/// A fresh matrix state whose projections derive from `seed`.
pub(super) fn seeded_state(seed: u64) -> MatrixState {
    MatrixState {
        seed,
        ..Default::default()
    }
}
