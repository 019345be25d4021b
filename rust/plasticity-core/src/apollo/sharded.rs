//! The Apollo step on one tensor-parallel shard of a matrix, exact against the
//! step on the whole matrix.
//!
//! Under tensor parallelism each rank holds a block of rows (a column-parallel
//! layer) or of columns (a row-parallel layer) of W and of its gradient G. The
//! step keeps the whole matrix's geometry: the side of G that is compressed, the
//! channels and the seeded projection P (r×d, identical on every rank because
//! it is generated from the matrix's seed). Two cases:
//!
//! - **The shard splits the channels** (rows of a tall matrix, columns of a wide
//!   one): R's channels are local, R = G_k·Pᵀ (or P·G_k) needs no communication,
//!   and so are the moments and the per-channel factors. Only scalars are
//!   summed over ranks: a non-finite flag, and Σ N², Σ R², ‖S‖² and Σ‖G‖² for
//!   the tensor-wide factor and the norm-growth limiter (5 f64, 40 bytes).
//! - **The shard splits the compressed dimension**: R = Σ_k G_k·P_kᵀ is a sum of
//!   per-shard partial products with P_k the matching columns of P, so R (r ×
//!   channels, f32) and the channels' ‖G‖² (f64) are summed over ranks once;
//!   every rank then holds the whole R and does the same moment update, so the
//!   moments are replicated and the factors identical.
//!
//! The sums go through a caller-given [`Collective`] (vLLM's process group in
//! the server, a gloo group in tests). Stochastic rounding of 16-bit weights
//! draws per local element, so it does not match the whole-matrix step bit for
//! bit; everything else does up to the summation order of the reductions.

use super::{generate_projection, ApolloConfig};
use super::{grow, limit, passes, scaling, use_bf16_projection, Geometry, MatrixState, Side, StepOutcome, Workspace};
use crate::element::Element;
use crate::error::{CoreError, Result};
use crate::rng;

/// Which axis of W a rank's shard cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardAxis {
    /// A block of rows (column-parallel linear: W is out × in, split along out).
    Rows,
    /// A block of columns (row-parallel linear: split along in).
    Cols,
}

/// One rank's block of a global `global_m × global_n` matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub axis: ShardAxis,
    /// First row (Rows) or column (Cols) of this rank's block in the whole matrix.
    pub offset: usize,
    pub global_m: usize,
    pub global_n: usize,
}

/// Summation over every rank of the group, in place (an all-reduce with SUM).
pub trait Collective {
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
}

impl Shard {
    fn whole(&self, rank: usize) -> Geometry {
        Geometry::new(self.global_m, self.global_n, rank)
    }

    /// Whether this shard cuts the compressed dimension (R must be summed over ranks).
    pub fn splits_compressed(&self) -> bool {
        let side = Geometry::new(self.global_m, self.global_n, 1).side();
        matches!(
            (side, self.axis),
            (Side::Right, ShardAxis::Cols) | (Side::Left, ShardAxis::Rows)
        )
    }

    /// Bytes one rank sends into the reductions of one applied step at `rank` r
    /// (the payload of each all-reduce, not the algorithm's traffic).
    pub fn reduced_bytes(&self, m: usize, n: usize, rank: usize) -> usize {
        let local = self.local(m, n, rank);
        if self.splits_compressed() {
            4 * local.moment_len() + 8 * local.channels() // R and the channels' ‖G‖²
        } else {
            8 + 8 * 4 // the non-finite flag, then four totals
        }
    }

    fn local(&self, m: usize, n: usize, rank: usize) -> Geometry {
        let mut g = Geometry::new(m, n, rank);
        g.forced = Some(self.whole(rank).side());
        g
    }

    fn check(&self, m: usize, n: usize) -> Result<()> {
        let (along, global, across, global_across) = match self.axis {
            ShardAxis::Rows => (m, self.global_m, n, self.global_n),
            ShardAxis::Cols => (n, self.global_n, m, self.global_m),
        };
        if across != global_across || along == 0 || self.offset + along > global {
            return Err(CoreError::Shape(format!(
                "a {m}×{n} block at {:?} offset {} is not a shard of a {}×{} matrix",
                self.axis, self.offset, self.global_m, self.global_n
            )));
        }
        Ok(())
    }
}

/// One Apollo step on this rank's shard (`m × n`, row-major), in place, summing
/// across ranks through `comm`. Every rank of the group must call it with the
/// same config, state and global shape. The moments are sized for the local
/// geometry: `m × r` (tall whole matrix) or `r × n` (wide).
#[allow(clippy::too_many_arguments)]
pub fn apollo_step_sharded<T: Element>(
    cfg: &ApolloConfig,
    shard: &Shard,
    m: usize,
    n: usize,
    w: &mut [T],
    g: &[T],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    state: &mut MatrixState,
    comm: &mut dyn Collective,
    ws: &mut Workspace,
) -> Result<StepOutcome> {
    cfg.validate()?;
    shard.check(m, n)?;
    let whole = shard.whole(cfg.rank);
    let geo = shard.local(m, n, cfg.rank);
    if w.len() != m * n || g.len() != m * n {
        return Err(CoreError::Shape(format!(
            "weight has {} and gradient {} elements, expected {m}×{n}",
            w.len(),
            g.len()
        )));
    }
    if exp_avg.len() != geo.moment_len() || exp_avg_sq.len() != geo.moment_len() {
        let (a, b) = geo.moment_shape();
        return Err(CoreError::Shape(format!(
            "moments have {} and {} elements, expected {a}×{b} for this shard",
            exp_avg.len(),
            exp_avg_sq.len()
        )));
    }
    let t = state.step;
    let period = t / cfg.update_proj_gap;
    let refreshed = t % cfg.update_proj_gap == 0;
    let threads = if m * n < 1 << 16 { 1 } else { ws.threads };

    // The whole matrix's P, then this shard's columns of it when the shard cuts d.
    let (d, dl) = (whole.compressed(), geo.compressed());
    grow(&mut ws.p, whole.projection_len());
    generate_projection(state.seed, period, cfg.rank, d, &mut ws.p[..whole.projection_len()]);
    let p: Vec<f32> = if shard.splits_compressed() {
        (0..cfg.rank)
            .flat_map(|k| ws.p[k * d + shard.offset..k * d + shard.offset + dl].iter().copied())
            .collect()
    } else {
        ws.p[..whole.projection_len()].to_vec()
    };

    // Pass 1 on the shard: R (partial when d is cut) and the channels' ‖G‖².
    let (mlen, ch) = (geo.moment_len(), geo.channels());
    grow(&mut ws.r, mlen);
    grow(&mut ws.gsq, ch);
    let use_bf16 = use_bf16_projection::<T>(cfg, &geo);
    passes::project(
        &geo,
        g,
        &p,
        &mut ws.r[..mlen],
        &mut ws.gsq[..ch],
        &mut ws.g32,
        &mut ws.a16,
        &mut ws.packed,
        use_bf16,
        threads,
    );
    let (r, gsq) = (&mut ws.r[..mlen], &mut ws.gsq[..ch]);
    if shard.splits_compressed() {
        comm.sum_f32(r)?;
        comm.sum_f64(gsq)?;
    }
    // One decision for all ranks: after the sums above every rank sees the same R;
    // otherwise a rank's non-finite shard must stop the others too.
    let mut bad = [f64::from(u8::from(
        !gsq.iter().sum::<f64>().is_finite() || !passes::all_finite(r, threads),
    ))];
    if !shard.splits_compressed() {
        comm.sum_f64(&mut bad)?;
    }
    if bad[0] != 0.0 {
        tracing::debug!(m, n, step = t, "apollo (shard): non-finite gradient, step skipped");
        return Ok(StepOutcome::SkippedNonFinite);
    }

    grow(&mut ws.nsq, ch);
    grow(&mut ws.rsq, ch);
    grow(&mut ws.scale, ch);
    let (nsq, rsq) = (&mut ws.nsq[..ch], &mut ws.rsq[..ch]);
    let adam = cfg.adam();
    passes::moments(&geo, &adam, r, exp_avg, exp_avg_sq, nsq, rsq, threads);

    // Totals over the whole matrix: local when every rank holds every channel.
    let scale = &mut ws.scale[..ch];
    scaling(cfg.scale_type, nsq, rsq, None, scale);
    let ch_norm: f64 = scale
        .iter()
        .zip(gsq.iter())
        .map(|(&s, &q)| (s as f64) * (s as f64) * q)
        .sum();
    let mut totals = [
        nsq.iter().sum::<f64>(),
        rsq.iter().sum::<f64>(),
        ch_norm,
        gsq.iter().sum::<f64>(),
    ];
    if !shard.splits_compressed() {
        comm.sum_f64(&mut totals)?;
    }
    let s_norm = match cfg.scale_type {
        super::ScaleType::Channel => totals[2].sqrt(),
        super::ScaleType::Tensor => {
            scaling(cfg.scale_type, nsq, rsq, Some((totals[0], totals[1])), scale);
            let s = scale.first().copied().unwrap_or(0.0) as f64;
            (s * s * totals[3]).sqrt()
        }
    };
    let limiter = limit(cfg.norm_growth_limit, s_norm, state);

    state.step = t + 1;
    let step_size = adam.step_size(state.step) as f32;
    let coef = step_size * cfg.alpha_for(d) / limiter;
    scale.iter_mut().for_each(|s| *s *= coef);
    let decay = cfg.lr * cfg.weight_decay;
    let round_seed = cfg
        .stochastic_rounding
        .then(|| rng::derive(state.seed ^ 0x5eed, state.step));
    passes::apply_update(&geo, w, g, scale, decay, round_seed, threads);
    Ok(StepOutcome::Applied {
        limiter,
        step_size,
        refreshed,
    })
}

#[cfg(test)]
mod tests;
