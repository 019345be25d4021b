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
//! the server, a gloo group in tests), three per optimizer step however many
//! matrices it steps ([`apollo_step_sharded_many`]). Stochastic rounding of 16-bit weights
//! draws per local element, so it does not match the whole-matrix step bit for
//! bit; everything else does up to the summation order of the reductions.

use super::{generate_projection, ApolloConfig};
use super::{
    grow, limit, passes, scaling, use_bf16_projection, Geometry, MatrixState, ScaleType, Side,
    StepOutcome, Workspace,
};
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

/// One matrix's part in a batched sharded step: this rank's block and its state.
pub struct ShardJob<'a, T> {
    pub shard: Shard,
    /// The block's shape on this rank.
    pub m: usize,
    pub n: usize,
    pub w: &'a mut [T],
    pub g: &'a [T],
    pub exp_avg: &'a mut [f32],
    pub exp_avg_sq: &'a mut [f32],
    pub state: &'a mut MatrixState,
}

/// What pass 1 left for the later phases of one job.
struct Pending {
    r: Vec<f32>,
    gsq: Vec<f64>,
    nsq: Vec<f64>,
    rsq: Vec<f64>,
    totals: [f64; 4],
    skipped: bool,
}

impl<T> ShardJob<'_, T> {
    fn check(&self, cfg: &ApolloConfig) -> Result<()> {
        let (m, n) = (self.m, self.n);
        self.shard.check(m, n)?;
        if self.w.len() != m * n || self.g.len() != m * n {
            return Err(CoreError::Shape(format!(
                "weight has {} and gradient {} elements, expected {m}×{n}",
                self.w.len(),
                self.g.len()
            )));
        }
        let geo = self.shard.local(m, n, cfg.rank);
        if self.exp_avg.len() != geo.moment_len() || self.exp_avg_sq.len() != geo.moment_len() {
            let (a, b) = geo.moment_shape();
            return Err(CoreError::Shape(format!(
                "moments have {} and {} elements, expected {a}×{b} for this shard",
                self.exp_avg.len(),
                self.exp_avg_sq.len()
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
    let job = ShardJob {
        shard: *shard,
        m,
        n,
        w,
        g,
        exp_avg,
        exp_avg_sq,
        state,
    };
    Ok(apollo_step_sharded_many(cfg, &mut [job], comm, ws)?[0])
}

/// One Apollo step on each of several shards with three sums over ranks in all,
/// whatever their number: a sum costs a round trip (about 0.8 ms over gloo on
/// one machine), so summing per matrix would cost more than the step itself.
/// Every rank must pass the same matrices in the same order. Nothing is written
/// if a job is malformed; a job whose gradient is not finite anywhere in the
/// group is skipped on every rank, the others are applied.
pub fn apollo_step_sharded_many<T: Element>(
    cfg: &ApolloConfig,
    jobs: &mut [ShardJob<'_, T>],
    comm: &mut dyn Collective,
    ws: &mut Workspace,
) -> Result<Vec<StepOutcome>> {
    cfg.validate()?;
    for job in jobs.iter() {
        job.check(cfg)?;
    }
    // Pass 1 per job: R (partial where d is cut) and the channels' ‖G‖².
    let mut pending: Vec<Pending> = jobs.iter().map(|job| project(cfg, job, ws)).collect();

    // Sum 1: R and ‖G‖² of the jobs that cut d, with the non-finite flags of the others.
    let cuts_d = |j: &ShardJob<'_, T>| j.shard.splits_compressed();
    let mut r_all: Vec<f32> = Vec::new();
    let mut f_all: Vec<f64> = Vec::new();
    for (job, p) in jobs.iter().zip(&pending) {
        if cuts_d(job) {
            r_all.extend_from_slice(&p.r);
            f_all.extend_from_slice(&p.gsq);
        } else {
            f_all.push(f64::from(u8::from(!finite(&p.r, &p.gsq))));
        }
    }
    if !r_all.is_empty() {
        comm.sum_f32(&mut r_all)?;
    }
    if !f_all.is_empty() {
        comm.sum_f64(&mut f_all)?;
    }
    let (mut ro, mut fo) = (0, 0);
    for (job, p) in jobs.iter().zip(pending.iter_mut()) {
        if cuts_d(job) {
            let (nr, ng) = (p.r.len(), p.gsq.len());
            p.r.copy_from_slice(&r_all[ro..ro + nr]);
            p.gsq.copy_from_slice(&f_all[fo..fo + ng]);
            (ro, fo) = (ro + nr, fo + ng);
            // every rank sees the same sums, so the same decision
            p.skipped = !finite(&p.r, &p.gsq);
        } else {
            p.skipped = f_all[fo] != 0.0;
            fo += 1;
        }
    }

    // Pass 2 per job: moments, per-channel factors, the local totals.
    let adam = cfg.adam();
    for (job, p) in jobs.iter_mut().zip(pending.iter_mut()) {
        if p.skipped {
            continue;
        }
        let geo = job.shard.local(job.m, job.n, cfg.rank);
        let threads = if job.m * job.n < 1 << 16 {
            1
        } else {
            ws.threads
        };
        let ch = geo.channels();
        p.nsq = vec![0.0; ch];
        p.rsq = vec![0.0; ch];
        passes::moments(
            &geo,
            &adam,
            &p.r,
            job.exp_avg,
            job.exp_avg_sq,
            &mut p.nsq,
            &mut p.rsq,
            threads,
        );
        let mut scale = vec![0f32; ch];
        scaling(cfg.scale_type, &p.nsq, &p.rsq, None, &mut scale);
        let ch_norm: f64 = scale
            .iter()
            .zip(&p.gsq)
            .map(|(&s, &q)| (s as f64) * (s as f64) * q)
            .sum();
        p.totals = [
            p.nsq.iter().sum(),
            p.rsq.iter().sum(),
            ch_norm,
            p.gsq.iter().sum(),
        ];
    }

    // Sum 2: the totals of the jobs that cut channels (the others hold every channel).
    let mut t_all: Vec<f64> = Vec::new();
    for (job, p) in jobs.iter().zip(&pending) {
        if !cuts_d(job) && !p.skipped {
            t_all.extend_from_slice(&p.totals);
        }
    }
    if !t_all.is_empty() {
        comm.sum_f64(&mut t_all)?;
    }

    // Pass 3 per job: the limiter and the update.
    let mut to = 0;
    let mut out = Vec::with_capacity(jobs.len());
    for (job, p) in jobs.iter_mut().zip(pending.iter_mut()) {
        if p.skipped {
            tracing::debug!(
                m = job.m,
                n = job.n,
                step = job.state.step,
                "apollo (shard): non-finite gradient, skipped"
            );
            out.push(StepOutcome::SkippedNonFinite);
            continue;
        }
        if !cuts_d(job) {
            p.totals.copy_from_slice(&t_all[to..to + 4]);
            to += 4;
        }
        out.push(apply(cfg, job, p, ws.threads));
    }
    Ok(out)
}

fn finite(r: &[f32], gsq: &[f64]) -> bool {
    gsq.iter().sum::<f64>().is_finite() && r.iter().all(|x| x.is_finite())
}

fn project<T: Element>(cfg: &ApolloConfig, job: &ShardJob<'_, T>, ws: &mut Workspace) -> Pending {
    let whole = job.shard.whole(cfg.rank);
    let geo = job.shard.local(job.m, job.n, cfg.rank);
    let period = job.state.step / cfg.update_proj_gap;
    let threads = if job.m * job.n < 1 << 16 {
        1
    } else {
        ws.threads
    };
    // The whole matrix's P, then this shard's columns of it when the shard cuts d.
    let (d, dl, off) = (whole.compressed(), geo.compressed(), job.shard.offset);
    grow(&mut ws.p, whole.projection_len());
    generate_projection(
        job.state.seed,
        period,
        cfg.rank,
        d,
        &mut ws.p[..whole.projection_len()],
    );
    let p: Vec<f32> = if job.shard.splits_compressed() {
        (0..cfg.rank)
            .flat_map(|k| ws.p[k * d + off..k * d + off + dl].iter().copied())
            .collect()
    } else {
        ws.p[..whole.projection_len()].to_vec()
    };
    let mut r = vec![0f32; geo.moment_len()];
    let mut gsq = vec![0f64; geo.channels()];
    let use_bf16 = use_bf16_projection::<T>(cfg, &geo);
    passes::project(
        &geo,
        job.g,
        &p,
        &mut r,
        &mut gsq,
        &mut ws.g32,
        &mut ws.a16,
        &mut ws.packed,
        use_bf16,
        threads,
    );
    Pending {
        r,
        gsq,
        nsq: Vec::new(),
        rsq: Vec::new(),
        totals: [0.0; 4],
        skipped: false,
    }
}

fn apply<T: Element>(
    cfg: &ApolloConfig,
    job: &mut ShardJob<'_, T>,
    p: &Pending,
    threads: usize,
) -> StepOutcome {
    let whole = job.shard.whole(cfg.rank);
    let geo = job.shard.local(job.m, job.n, cfg.rank);
    let threads = if job.m * job.n < 1 << 16 { 1 } else { threads };
    let t = job.state.step;
    let mut scale = vec![0f32; geo.channels()];
    let s_norm = match cfg.scale_type {
        ScaleType::Channel => {
            scaling(cfg.scale_type, &p.nsq, &p.rsq, None, &mut scale);
            p.totals[2].sqrt()
        }
        ScaleType::Tensor => {
            scaling(
                cfg.scale_type,
                &p.nsq,
                &p.rsq,
                Some((p.totals[0], p.totals[1])),
                &mut scale,
            );
            let s = scale.first().copied().unwrap_or(0.0) as f64;
            (s * s * p.totals[3]).sqrt()
        }
    };
    let limiter = limit(cfg.norm_growth_limit, s_norm, job.state);
    job.state.step = t + 1;
    let adam = cfg.adam();
    let step_size = adam.step_size(job.state.step) as f32;
    let coef = step_size * cfg.alpha_for(whole.compressed()) / limiter;
    scale.iter_mut().for_each(|s| *s *= coef);
    let decay = cfg.lr * cfg.weight_decay;
    let round_seed = cfg
        .stochastic_rounding
        .then(|| rng::derive(job.state.seed ^ 0x5eed, job.state.step));
    passes::apply_update(&geo, job.w, job.g, &scale, decay, round_seed, threads);
    StepOutcome::Applied {
        limiter,
        step_size,
        refreshed: t % cfg.update_proj_gap == 0,
    }
}

#[cfg(test)]
mod tests;
