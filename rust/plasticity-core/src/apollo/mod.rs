//! The Apollo optimizer step (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level
//! Performance", arXiv:2412.05270), written from the paper and the algorithm
//! notes in `shared/reference/apollo-official-algorithm.md`.
//!
//! For a weight W (m×n) with gradient G:
//! 1. Project G along its smaller dimension d to rank r with a Gaussian matrix P
//!    (r×d, entries N(0, 1/r)) regenerated from a per-matrix seed every
//!    `update_proj_gap` steps: R = G·Pᵀ (m×r) if m ≥ n, R = P·G (r×n) if m < n.
//! 2. Adam moments on R (no bias correction inside; it goes into the step size).
//! 3. Per channel (rows if m ≥ n, columns if m < n) s = ‖N‖/(‖R‖+1e-8) with
//!    N = M/(√V+ε); rank-1 "Apollo-Mini" uses one tensor-wide s.
//! 4. S = G·diag(s): the full-rank gradient, direction kept per channel.
//! 5. Norm-growth limiter: ‖S_t‖ ≤ γ·‖S_{t−1}‖ (γ = 1.01).
//! 6. W −= lr·bc·α·S, then decoupled weight decay W −= lr·wd·W.
//!
//! The implementation never forms S: ‖S‖² = Σ s_i²‖G_i‖², so G is read once for
//! the projection (+ its channel norms) and once for the fused final update.

pub mod bf16_gemm;
mod passes;
mod projection_gemm;
pub mod sharded;

use crate::element::Element;
use crate::error::{CoreError, Result};
use crate::rng;

/// How the Adam-space ratio is turned into a scaling of the raw gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleType {
    /// One factor per channel (Apollo).
    Channel,
    /// One factor for the whole tensor (Apollo-Mini, rank 1).
    Tensor,
}

/// Precision of the projection R = G·Pᵀ (only R's channel norms use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionPrecision {
    /// f32 GEMM: exact reference semantics.
    F32,
    /// bf16 inputs, f32 accumulation (AVX512-BF16; f32 fallback elsewhere).
    Bf16,
    /// bf16 for 16-bit weights (as the reference does), f32 for f32 weights.
    Auto,
}

/// Hyper-parameters of one Apollo parameter group.
#[derive(Clone, Debug)]
pub struct ApolloConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub correct_bias: bool,
    pub rank: usize,
    pub scale_type: ScaleType,
    /// Multiplier α on the update; `None` means √(d/r) (the paper's compensation
    /// for the projection ratio, d the compressed dimension).
    pub alpha: Option<f32>,
    pub update_proj_gap: u64,
    /// γ of the norm-growth limiter; `None` disables it.
    pub norm_growth_limit: Option<f32>,
    /// Round 16-bit weights stochastically (unbiased) instead of to nearest.
    pub stochastic_rounding: bool,
    pub projection_precision: ProjectionPrecision,
}

impl Default for ApolloConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            correct_bias: true,
            rank: 256,
            scale_type: ScaleType::Channel,
            alpha: None,
            update_proj_gap: 200,
            norm_growth_limit: Some(1.01),
            stochastic_rounding: false,
            projection_precision: ProjectionPrecision::Auto,
        }
    }
}

impl ApolloConfig {
    pub fn validate(&self) -> Result<()> {
        self.adam().validate()?;
        if self.rank == 0 {
            return Err(CoreError::Config("rank must be ≥ 1".into()));
        }
        if self.update_proj_gap == 0 {
            return Err(CoreError::Config("update_proj_gap must be ≥ 1".into()));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(CoreError::Config(format!(
                    "alpha must be finite and > 0, got {a}"
                )));
            }
        }
        if let Some(g) = self.norm_growth_limit {
            if !(g.is_finite() && g >= 1.0) {
                return Err(CoreError::Config(format!(
                    "norm_growth_limit must be finite and ≥ 1, got {g}"
                )));
            }
        }
        Ok(())
    }

    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            correct_bias: self.correct_bias,
            stochastic_rounding: self.stochastic_rounding,
        }
    }

    /// α actually used for a matrix whose compressed dimension is `d`.
    pub fn alpha_for(&self, d: usize) -> f32 {
        self.alpha
            .unwrap_or_else(|| (d as f32 / self.rank as f32).sqrt())
    }
}

/// Hyper-parameters of the plain AdamW step.
#[derive(Clone, Debug)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub correct_bias: bool,
    pub stochastic_rounding: bool,
}

impl AdamConfig {
    pub fn validate(&self) -> Result<()> {
        let finite_nonneg = |name: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(CoreError::Config(format!(
                    "{name} must be finite and ≥ 0, got {v}"
                )))
            }
        };
        finite_nonneg("lr", self.lr)?;
        finite_nonneg("weight_decay", self.weight_decay)?;
        finite_nonneg("eps", self.eps)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(CoreError::Config(format!(
                    "{name} must be in [0, 1), got {b}"
                )));
            }
        }
        Ok(())
    }

    /// lr·√(1−β2^t)/(1−β1^t) in f64, as the reference computes it in Python floats.
    fn step_size(&self, t: u64) -> f64 {
        let lr = self.lr as f64;
        if !self.correct_bias {
            return lr;
        }
        let t = t.min(i32::MAX as u64) as i32;
        lr * (1.0 - (self.beta2 as f64).powi(t)).sqrt() / (1.0 - (self.beta1 as f64).powi(t))
    }
}

/// The scalar part of one matrix's optimizer state (the moments are separate
/// caller-owned buffers so they can live in torch tensors).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MatrixState {
    /// Steps applied so far.
    pub step: u64,
    /// Seed of this matrix's projections; period k uses `rng::derive(seed, k)`.
    pub seed: u64,
    /// ‖S‖ of the previous applied step after limiting (None before the first).
    pub prev_norm: Option<f32>,
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    Applied {
        /// The divisor L ≥ 1 of the norm-growth limiter (1 = did not fire).
        limiter: f32,
        /// The bias-corrected step size used.
        step_size: f32,
        /// Whether this step generated a fresh projection.
        refreshed: bool,
    },
    /// The gradient (or its projection) was not finite: nothing was written.
    SkippedNonFinite,
}

impl StepOutcome {
    pub fn applied(&self) -> bool {
        matches!(self, StepOutcome::Applied { .. })
    }
}

/// Which side of G is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// m ≥ n: R = G·Pᵀ (m×r), channels are the m rows, P is r×n.
    Right,
    /// m < n: R = P·G (r×n), channels are the n columns, P is r×m.
    Left,
}

/// Geometry of a matrix under Apollo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub m: usize,
    pub n: usize,
    pub rank: usize,
    /// A shard of a larger matrix keeps the whole matrix's side, whatever its own shape
    /// (see [`sharded`]); None: the side follows m and n.
    pub(crate) forced: Option<Side>,
}

impl Geometry {
    pub fn new(m: usize, n: usize, rank: usize) -> Self {
        Self {
            m,
            n,
            rank,
            forced: None,
        }
    }
    pub(crate) fn side(&self) -> Side {
        match self.forced {
            Some(side) => side,
            None if self.m >= self.n => Side::Right,
            None => Side::Left,
        }
    }
    /// The compressed dimension d: min(m, n) unless the side is forced.
    pub fn compressed(&self) -> usize {
        match self.side() {
            Side::Right => self.n,
            Side::Left => self.m,
        }
    }
    /// Number of channels: max(m, n) unless the side is forced.
    pub fn channels(&self) -> usize {
        match self.side() {
            Side::Right => self.m,
            Side::Left => self.n,
        }
    }
    /// Elements in each moment buffer: r·max(m, n).
    pub fn moment_len(&self) -> usize {
        self.rank * self.channels()
    }
    /// Elements of P: r·min(m, n).
    pub fn projection_len(&self) -> usize {
        self.rank * self.compressed()
    }
    /// Shape of each moment buffer as (rows, cols).
    pub fn moment_shape(&self) -> (usize, usize) {
        match self.side() {
            Side::Right => (self.m, self.rank),
            Side::Left => (self.rank, self.n),
        }
    }
}

/// Reusable scratch memory and threading for steps. One per training thread.
///
/// Holds at most: G converted to f32 (16-bit weights only), R, P and the
/// per-channel sums, each sized for the largest matrix stepped so far.
pub struct Workspace {
    pub(crate) threads: usize,
    pub(crate) g32: Vec<f32>,
    pub(crate) r: Vec<f32>,
    pub(crate) p: Vec<f32>,
    pub(crate) gsq: Vec<f64>,
    pub(crate) nsq: Vec<f64>,
    pub(crate) rsq: Vec<f64>,
    pub(crate) scale: Vec<f32>,
    pub(crate) a16: Vec<u16>,
    pub(crate) packed: bf16_gemm::PackedB,
    /// Opt-in: keep the last projection per (seed, period) so it is generated
    /// once per refresh instead of once per step (costs r·d floats per matrix).
    cache: Option<std::collections::HashMap<(u64, u64), Vec<f32>>>,
}

impl Workspace {
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            g32: Vec::new(),
            r: Vec::new(),
            p: Vec::new(),
            gsq: Vec::new(),
            nsq: Vec::new(),
            rsq: Vec::new(),
            scale: Vec::new(),
            a16: Vec::new(),
            packed: bf16_gemm::PackedB::new(),
            cache: None,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Keep generated projections between steps (the opt-in speed trade).
    pub fn set_projection_cache(&mut self, enabled: bool) {
        self.cache = if enabled {
            Some(Default::default())
        } else {
            None
        };
    }

    /// Bytes of scratch currently held (not counting the projection cache).
    pub fn scratch_bytes(&self) -> usize {
        4 * (self.g32.capacity() + self.r.capacity() + self.p.capacity() + self.scale.capacity())
            + 2 * (self.a16.capacity() + self.packed.data.capacity())
            + 8 * (self.gsq.capacity() + self.nsq.capacity() + self.rsq.capacity())
    }

    /// Bytes held by the projection cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache
            .as_ref()
            .map_or(0, |c| c.values().map(|v| 4 * v.len()).sum())
    }
}

/// The normal stream a projection is drawn from: its seed for refresh period
/// `period` and the standard deviation 1/√r. The one definition, so the CUDA
/// path (plasticity-cuda's `generate_projection`) draws the same P.
pub fn projection_stream(seed: u64, period: u64, rank: usize) -> (u64, f32) {
    (rng::derive(seed, period), 1.0 / (rank as f32).sqrt())
}

/// Generate the projection P (r×d, i.i.d. N(0, 1/r)) of `seed` for period `period`:
/// element k is `std ×` element k of `rng`'s normal stream (see [`projection_stream`]).
pub fn generate_projection(seed: u64, period: u64, rank: usize, d: usize, out: &mut [f32]) {
    assert_eq!(out.len(), rank * d);
    let (s, std) = projection_stream(seed, period, rank);
    passes::fill_normal_parallel(s, std, out);
}

/// Whether pass 1 takes the bf16 kernel (it needs an even inner dimension).
fn use_bf16_projection<T: Element>(cfg: &ApolloConfig, geo: &Geometry) -> bool {
    geo.compressed() % 2 == 0
        && bf16_gemm::available()
        && match cfg.projection_precision {
            ProjectionPrecision::F32 => false,
            ProjectionPrecision::Bf16 => true,
            ProjectionPrecision::Auto => T::DTYPE != crate::element::DType::F32,
        }
}

/// The per-channel scaling factors from Σ N² and Σ R² (Channel), or one shared factor
/// from their totals (Tensor).
fn scaling(
    scale_type: ScaleType,
    nsq: &[f64],
    rsq: &[f64],
    totals: Option<(f64, f64)>,
    scale: &mut [f32],
) {
    match scale_type {
        ScaleType::Channel => {
            for ((s, &a), &b) in scale.iter_mut().zip(nsq.iter()).zip(rsq.iter()) {
                *s = (a.sqrt() / (b.sqrt() + 1e-8)) as f32;
            }
        }
        ScaleType::Tensor => {
            let (a, b) = totals.unwrap_or_else(|| (nsq.iter().sum(), rsq.iter().sum()));
            scale.fill((a.sqrt() / (b.sqrt() + 1e-8)) as f32);
        }
    }
}

/// The norm-growth limiter's divisor L ≥ 1 for an update of norm ‖S‖, updating the state.
fn limit(gamma: Option<f32>, s_norm: f64, state: &mut MatrixState) -> f32 {
    let mut limiter = 1.0f32;
    if let Some(gamma) = gamma {
        match state.prev_norm {
            Some(prev) => {
                let ratio = (s_norm as f32) / (prev + 1e-8);
                limiter = ratio.max(gamma) / gamma;
                state.prev_norm = Some((s_norm as f32) / limiter);
            }
            None => state.prev_norm = Some(s_norm as f32),
        }
    }
    limiter
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// One Apollo step on a row-major m×n weight, in place.
///
/// `projection`, when given, replaces the seeded projection for this step
/// (r×d row-major, the test hook used to compare against a reference
/// implementation's own random matrix). Returns an error, with nothing written,
/// on any shape or configuration mismatch; a non-finite gradient is not an
/// error but a [`StepOutcome::SkippedNonFinite`] with nothing written either.
#[allow(clippy::too_many_arguments)]
pub fn apollo_step<T: Element>(
    cfg: &ApolloConfig,
    m: usize,
    n: usize,
    w: &mut [T],
    g: &[T],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    state: &mut MatrixState,
    projection: Option<&[f32]>,
    ws: &mut Workspace,
) -> Result<StepOutcome> {
    cfg.validate()?;
    let geo = Geometry::new(m, n, cfg.rank);
    if m == 0 || n == 0 {
        return Err(CoreError::Shape(format!("empty matrix {m}×{n}")));
    }
    if w.len() != m * n || g.len() != m * n {
        return Err(CoreError::Shape(format!(
            "weight has {} and gradient {} elements, expected {m}×{n} = {}",
            w.len(),
            g.len(),
            m * n
        )));
    }
    if exp_avg.len() != geo.moment_len() || exp_avg_sq.len() != geo.moment_len() {
        let (a, b) = geo.moment_shape();
        return Err(CoreError::Shape(format!(
            "moments have {} and {} elements, expected {a}×{b} = {} for rank {}",
            exp_avg.len(),
            exp_avg_sq.len(),
            geo.moment_len(),
            cfg.rank
        )));
    }
    if let Some(p) = projection {
        if p.len() != geo.projection_len() {
            return Err(CoreError::Shape(format!(
                "injected projection has {} elements, expected {}×{} = {}",
                p.len(),
                cfg.rank,
                geo.compressed(),
                geo.projection_len()
            )));
        }
    }

    let t = state.step; // steps done before this one
    let period = t / cfg.update_proj_gap;
    let refreshed = t % cfg.update_proj_gap == 0;
    let d = geo.compressed();
    let threads = if m * n < 1 << 16 { 1 } else { ws.threads };

    // The projection for this period: injected, cached, or regenerated.
    let plen = geo.projection_len();
    let p: &[f32] = if let Some(p) = projection {
        p
    } else if let Some(cache) = ws.cache.as_mut() {
        let key = (state.seed, period);
        if !cache.contains_key(&key) {
            cache.retain(|k, _| k.0 != state.seed);
            let mut buf = vec![0f32; plen];
            generate_projection(state.seed, period, cfg.rank, d, &mut buf);
            cache.insert(key, buf);
        }
        ws.p.clear();
        ws.p.extend_from_slice(&cache[&key]);
        &ws.p[..plen]
    } else {
        grow(&mut ws.p, plen);
        generate_projection(state.seed, period, cfg.rank, d, &mut ws.p[..plen]);
        &ws.p[..plen]
    };

    // Pass 1: R and the squared channel norms of G.
    grow(&mut ws.r, geo.moment_len());
    grow(&mut ws.gsq, geo.channels());
    let r = &mut ws.r[..geo.moment_len()];
    let gsq = &mut ws.gsq[..geo.channels()];
    let use_bf16 = use_bf16_projection::<T>(cfg, &geo);
    passes::project(
        &geo,
        g,
        p,
        r,
        gsq,
        &mut ws.g32,
        &mut ws.a16,
        &mut ws.packed,
        use_bf16,
        threads,
    );

    let gsq_total: f64 = gsq.iter().sum();
    if !gsq_total.is_finite() || !passes::all_finite(r, threads) {
        tracing::debug!(m, n, step = t, "apollo: non-finite gradient, step skipped");
        return Ok(StepOutcome::SkippedNonFinite);
    }

    // Moments, then the scaling factors from the per-channel ‖N‖² and ‖R‖².
    let ch = geo.channels();
    grow(&mut ws.nsq, ch);
    grow(&mut ws.rsq, ch);
    grow(&mut ws.scale, ch);
    let (nsq, rsq) = (&mut ws.nsq[..ch], &mut ws.rsq[..ch]);
    let adam = cfg.adam();
    passes::moments(&geo, &adam, r, exp_avg, exp_avg_sq, nsq, rsq, threads);
    let scale = &mut ws.scale[..ch];
    scaling(cfg.scale_type, nsq, rsq, None, scale);

    // Norm of S = G·diag(s) without forming it.
    let s_norm: f64 = scale
        .iter()
        .zip(gsq.iter())
        .map(|(&s, &q)| (s as f64) * (s as f64) * q)
        .sum::<f64>()
        .sqrt();
    let limiter = limit(cfg.norm_growth_limit, s_norm, state);

    state.step = t + 1;
    let step_size = adam.step_size(state.step) as f32;
    let coef = step_size * cfg.alpha_for(d) / limiter;
    scale.iter_mut().for_each(|s| *s *= coef);

    // Pass 2: W −= c·G, then W −= lr·wd·W.
    let decay = cfg.lr * cfg.weight_decay;
    let round_seed = if cfg.stochastic_rounding {
        Some(rng::derive(state.seed ^ 0x5eed, state.step))
    } else {
        None
    };
    passes::apply_update(&geo, w, g, scale, decay, round_seed, threads);

    Ok(StepOutcome::Applied {
        limiter,
        step_size,
        refreshed,
    })
}

/// One plain AdamW step in the HF/apollo-torch convention (ε added before bias
/// correction, decoupled decay after the update), for 1-D and small tensors.
pub fn adamw_step<T: Element>(
    cfg: &AdamConfig,
    w: &mut [T],
    g: &[T],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    step: &mut u64,
    seed: u64,
    threads: usize,
) -> Result<StepOutcome> {
    cfg.validate()?;
    if w.len() != g.len() || exp_avg.len() != w.len() || exp_avg_sq.len() != w.len() {
        return Err(CoreError::Shape(format!(
            "AdamW buffers differ in length: weight {}, gradient {}, moments {} and {}",
            w.len(),
            g.len(),
            exp_avg.len(),
            exp_avg_sq.len()
        )));
    }
    let threads = if w.len() < 1 << 16 { 1 } else { threads };
    if !passes::all_finite_t(g, threads) {
        return Ok(StepOutcome::SkippedNonFinite);
    }
    *step += 1;
    let step_size = cfg.step_size(*step) as f32;
    let round_seed = if cfg.stochastic_rounding {
        Some(rng::derive(seed ^ 0xada3, *step))
    } else {
        None
    };
    passes::adamw_update(
        cfg, step_size, w, g, exp_avg, exp_avg_sq, round_seed, threads,
    );
    Ok(StepOutcome::Applied {
        limiter: 1.0,
        step_size,
        refreshed: false,
    })
}

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
