//! Apollo's step on the device: `kernels/apollo.cu`, driven from here.
//!
//! The same step as plasticity-core's `apollo_step` (f32 state; f32, bf16 or
//! f16 weights), in eight launches that need no host synchronisation: the
//! step count, the limiter's previous norm and the "skipped" flag of a
//! non-finite gradient live on the device ([`ApolloState`]). What is launched,
//! in which order and with which shape is decided by [`step_plan`] and
//! [`params`], plain functions that a host test also drives: it runs the
//! kernels' own source on the CPU, one thread after another, and compares the
//! result with the core (tests/host_reference/apollo.rs). Stochastic rounding
//! is not offered on the device yet (refused).

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use plasticity_core::apollo::Geometry;
use plasticity_core::{ApolloConfig, ScaleType};

use crate::launch::{blocks_1d, Shape, BLOCK, MAX_BLOCKS_X};
use crate::{CudaError, FloatType, Gpu};

/// The kernel file.
pub const KERNEL: &str = "apollo";

/// One matrix's device-resident scalars (`struct ApolloState` in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ApolloState {
    /// Applied steps.
    pub step: u64,
    /// ‖S‖ of the last applied step after limiting.
    pub prev_norm: f32,
    /// Whether `prev_norm` is set.
    pub has_prev: i32,
    /// The last step was skipped (non-finite gradient): nothing was written.
    pub skipped: i32,
    /// The last step started a new projection period.
    pub refreshed: i32,
    /// The last applied step's limiter L ≥ 1.
    pub limiter: f32,
    /// The last applied step's bias-corrected step size.
    pub step_size: f32,
    /// Steps skipped so far.
    pub skipped_total: u64,
    /// This step's Σ N² and Σ R² over channels (tensor scaling), and ‖S‖².
    pub total_nsq: f64,
    pub total_rsq: f64,
    pub total_ss: f64,
    /// This step's step_size·α/L.
    pub coef: f32,
    pub pad: i32,
}

// SAFETY: plain old data with the kernel's layout (checked by a test against the host build).
unsafe impl DeviceRepr for ApolloState {}

/// Everything one launch needs (`struct ApolloParams` in the kernel), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ApolloParams {
    pub w: u64,
    pub g: u64,
    pub p: u64,
    pub r: u64,
    pub m1: u64,
    pub m2: u64,
    pub gsq: u64,
    pub nsq: u64,
    pub rsq: u64,
    pub scale: u64,
    pub state: u64,
    pub seed: u64,
    pub m: u64,
    pub n: u64,
    pub rank: u64,
    pub gap: u64,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub std_dev: f32,
    pub alpha: f32,
    pub gamma: f32,
    pub decay: f32,
    pub right: i32,
    pub tensor_scale: i32,
    pub correct_bias: i32,
    pub use_limiter: i32,
}

// SAFETY: as for ApolloState.
unsafe impl DeviceRepr for ApolloParams {}

/// Device addresses of one step's buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Addresses {
    /// Weight and gradient: m×n of the weight's type.
    pub w: u64,
    pub g: u64,
    /// Moments: rank·channels f32 each (the CPU path's shapes).
    pub m1: u64,
    pub m2: u64,
    /// Scratch, sized by [`Scratch::for_matrix`].
    pub p: u64,
    pub r: u64,
    pub gsq: u64,
    pub nsq: u64,
    pub rsq: u64,
    pub scale: u64,
    /// One [`ApolloState`].
    pub state: u64,
}

/// Element counts of the scratch buffers of an m×n matrix at rank r.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// P: r·d f32.
    pub p: usize,
    /// R: r·channels f32 (also each moment's length).
    pub r: usize,
    /// gsq, nsq, rsq: channels f64 each; scale: channels f32.
    pub channels: usize,
}

impl Scratch {
    pub fn for_matrix(m: usize, n: usize, rank: usize) -> Scratch {
        let geo = Geometry::new(m, n, rank);
        Scratch {
            p: geo.projection_len(),
            r: geo.moment_len(),
            channels: geo.channels(),
        }
    }
}

/// The parameters of every launch of one step. Errors, with nothing launched,
/// on a configuration the core refuses, on an empty matrix, on stochastic
/// rounding (not on the device yet), and on a matrix the CPU would step with
/// plain AdamW instead (its smaller side not larger than the rank).
pub fn params(
    cfg: &ApolloConfig,
    m: usize,
    n: usize,
    seed: u64,
    a: &Addresses,
) -> Result<ApolloParams, CudaError> {
    cfg.validate()
        .map_err(|e| CudaError::InvalidArgument(e.to_string()))?;
    if m == 0 || n == 0 {
        return Err(CudaError::InvalidArgument(format!("empty matrix {m}×{n}")));
    }
    if cfg.stochastic_rounding {
        return Err(CudaError::InvalidArgument(
            "stochastic rounding is not implemented on the device".into(),
        ));
    }
    let geo = Geometry::new(m, n, cfg.rank);
    let d = geo.compressed();
    if d <= cfg.rank {
        return Err(CudaError::InvalidArgument(format!(
            "{m}×{n} at rank {}: the smaller side must exceed the rank (the CPU steps such matrices with AdamW)",
            cfg.rank
        )));
    }
    let (_, std_dev) = plasticity_core::apollo::projection_stream(seed, 0, cfg.rank);
    Ok(ApolloParams {
        w: a.w,
        g: a.g,
        p: a.p,
        r: a.r,
        m1: a.m1,
        m2: a.m2,
        gsq: a.gsq,
        nsq: a.nsq,
        rsq: a.rsq,
        scale: a.scale,
        state: a.state,
        seed,
        m: m as u64,
        n: n as u64,
        rank: cfg.rank as u64,
        gap: cfg.update_proj_gap,
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        std_dev,
        alpha: cfg.alpha_for(d),
        gamma: cfg.norm_growth_limit.unwrap_or(1.0),
        decay: cfg.lr * cfg.weight_decay,
        right: (m >= n) as i32,
        tensor_scale: (cfg.scale_type == ScaleType::Tensor) as i32,
        correct_bias: cfg.correct_bias as i32,
        use_limiter: cfg.norm_growth_limit.is_some() as i32,
    })
}

fn tag(float: FloatType) -> &'static str {
    match float {
        FloatType::F32 => "f32",
        FloatType::BF16 => "bf16",
        FloatType::F16 => "f16",
    }
}

fn grid(items: u64) -> Shape {
    Shape {
        grid: (blocks_1d(items, BLOCK, MAX_BLOCKS_X), 1, 1),
        block: (BLOCK, 1, 1),
    }
}

const ONE_THREAD: Shape = Shape {
    grid: (1, 1, 1),
    block: (1, 1, 1),
};

/// The launches of one step, in stream order: (entry point, shape).
pub fn step_plan(float: FloatType, m: usize, n: usize, rank: usize) -> Vec<(String, Shape)> {
    let s = Scratch::for_matrix(m, n, rank);
    let t = tag(float);
    vec![
        ("apollo_begin".to_string(), ONE_THREAD),
        (
            "apollo_projection_step".to_string(),
            grid(s.p.div_ceil(2) as u64),
        ),
        (format!("apollo_gsq_{t}"), grid(s.channels as u64)),
        (format!("apollo_project_{t}"), grid(s.r as u64)),
        ("apollo_moments".to_string(), grid(s.channels as u64)),
        ("apollo_scale".to_string(), grid(s.channels as u64)),
        ("apollo_limit".to_string(), ONE_THREAD),
        (format!("apollo_update_{t}"), grid((m * n) as u64)),
    ]
}

/// Every entry point `apollo.cu` must define.
pub fn apollo_entries() -> Vec<String> {
    let mut out: Vec<String> = [
        "apollo_fill_normal",
        "apollo_begin",
        "apollo_projection_step",
        "apollo_moments",
        "apollo_scale",
        "apollo_limit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in ["f32", "bf16", "f16"] {
        for k in ["gsq", "project", "update"] {
            out.push(format!("apollo_{k}_{t}"));
        }
    }
    out
}

/// One matrix's Apollo on a device: its scratch and its device-resident state,
/// stepping on the [`Gpu`]'s own stream.
pub struct DeviceApollo {
    gpu: Gpu,
    m: usize,
    n: usize,
    rank: usize,
    seed: u64,
    float: FloatType,
    p: CudaSlice<f32>,
    r: CudaSlice<f32>,
    gsq: CudaSlice<f64>,
    nsq: CudaSlice<f64>,
    rsq: CudaSlice<f64>,
    scale: CudaSlice<f32>,
    state: CudaSlice<ApolloState>,
}

impl DeviceApollo {
    /// Allocate the scratch and a fresh state (step 0) for an m×n matrix at `rank`.
    pub fn new(
        gpu: &Gpu,
        m: usize,
        n: usize,
        rank: usize,
        float: FloatType,
        seed: u64,
    ) -> Result<Self, CudaError> {
        let cfg = ApolloConfig {
            rank,
            ..Default::default()
        };
        params(&cfg, m, n, seed, &Addresses::default())?; // the shape, before allocating
        let s = Scratch::for_matrix(m, n, rank);
        let st = gpu.stream();
        Ok(Self {
            gpu: gpu.clone(),
            m,
            n,
            rank,
            seed,
            float,
            p: st.alloc_zeros(s.p)?,
            r: st.alloc_zeros(s.r)?,
            gsq: st.alloc_zeros(s.channels)?,
            nsq: st.alloc_zeros(s.channels)?,
            rsq: st.alloc_zeros(s.channels)?,
            scale: st.alloc_zeros(s.channels)?,
            state: st.clone_htod(&[ApolloState::default()])?,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The device state, copied back (synchronises the stream).
    pub fn state(&self) -> Result<ApolloState, CudaError> {
        Ok(self.gpu.stream().clone_dtoh(&self.state)?[0])
    }

    /// Replace the device state (a loaded checkpoint: step count, limiter norm), in stream order.
    pub fn set_state(&mut self, state: ApolloState) -> Result<(), CudaError> {
        Ok(self.gpu.stream().memcpy_htod(&[state], &mut self.state)?)
    }

    /// Queue one step on the Gpu's own stream; returns without waiting.
    ///
    /// # Safety
    /// `w` and `g` are device addresses of m×n elements of this matrix's type,
    /// `m1` and `m2` of rank·channels f32 each (the CPU path's moment shapes),
    /// all on this device, distinct, alive and not written by other streams
    /// until the step has run (order other streams with events, as
    /// [`DeviceApollo::step_ordered`] does).
    pub unsafe fn step_raw(
        &mut self,
        cfg: &ApolloConfig,
        w: u64,
        g: u64,
        m1: u64,
        m2: u64,
    ) -> Result<(), CudaError> {
        use cudarc::driver::DevicePtr;
        if cfg.rank != self.rank {
            return Err(CudaError::InvalidArgument(format!(
                "rank {} but this matrix's state was made for rank {}",
                cfg.rank, self.rank
            )));
        }
        let stream = self.gpu.stream().clone();
        let (p, _a) = self.p.device_ptr(&stream);
        let (r, _b) = self.r.device_ptr(&stream);
        let (gsq, _c) = self.gsq.device_ptr(&stream);
        let (nsq, _d) = self.nsq.device_ptr(&stream);
        let (rsq, _e) = self.rsq.device_ptr(&stream);
        let (scale, _f) = self.scale.device_ptr(&stream);
        let (state, _g) = self.state.device_ptr(&stream);
        let addrs = Addresses {
            w,
            g,
            m1,
            m2,
            p,
            r,
            gsq,
            nsq,
            rsq,
            scale,
            state,
        };
        let prm = params(cfg, self.m, self.n, self.seed, &addrs)?;
        for (entry, shape) in step_plan(self.float, self.m, self.n, self.rank) {
            let f = self.gpu.function(KERNEL, &entry)?;
            let mut args = stream.launch_builder(&f);
            args.arg(&prm);
            let cfg = LaunchConfig {
                grid_dim: shape.grid,
                block_dim: shape.block,
                shared_mem_bytes: 0,
            };
            // SAFETY: every entry takes one ApolloParams by value; the scratch is sized by
            // Scratch::for_matrix and the caller vouches for w, g, m1, m2.
            unsafe { args.launch(cfg) }?;
        }
        Ok(())
    }

    /// One step ordered against `caller` (a raw `CUstream`, torch's current stream): this
    /// Gpu's stream waits for an event recorded on `caller` (the gradient is ready), runs
    /// the step, and `caller` waits for an event recorded after it (the next forward sees
    /// the new weights; memory freed by the caller afterwards is not reused too early).
    /// No host synchronisation.
    ///
    /// # Safety
    /// As [`DeviceApollo::step_raw`], and `caller` is a live stream of this device.
    pub unsafe fn step_ordered(
        &mut self,
        cfg: &ApolloConfig,
        caller: usize,
        w: u64,
        g: u64,
        m1: u64,
        m2: u64,
    ) -> Result<(), CudaError> {
        if !crate::stream_on(&self.gpu, caller)? {
            return Err(CudaError::InvalidArgument(format!(
                "stream {caller:#x} belongs to another device's context, not cuda:{}",
                self.gpu.ordinal()
            )));
        }
        let ctx = self.gpu.context().clone();
        let own = self.gpu.stream().clone();
        // SAFETY: the caller vouches for the handle; the wrapper does not destroy it.
        let theirs = unsafe { ctx.wrap_borrowed_stream(caller as cudarc::driver::sys::CUstream) };
        let ready = theirs.record_event(None)?;
        own.wait(&ready)?;
        unsafe { self.step_raw(cfg, w, g, m1, m2) }?;
        let done = own.record_event(None)?;
        theirs.wait(&done)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_eight_launches_in_the_step_order() {
        let plan = step_plan(FloatType::BF16, 5120, 17408, 256);
        let names: Vec<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "apollo_begin",
                "apollo_projection_step",
                "apollo_gsq_bf16",
                "apollo_project_bf16",
                "apollo_moments",
                "apollo_scale",
                "apollo_limit",
                "apollo_update_bf16"
            ]
        );
        for (name, shape) in &plan {
            assert!(
                apollo_entries().iter().any(|e| e == name),
                "{name} not an entry point"
            );
            assert!(
                shape.grid.0 >= 1 && shape.grid.0 <= MAX_BLOCKS_X,
                "{name}: {shape:?}"
            );
        }
        // One thread clears the step's flags and sums, one turns the sums into the limiter.
        assert_eq!(plan[0].1, ONE_THREAD);
        assert_eq!(plan[6].1, ONE_THREAD);
        assert!(
            plan[5].1.threads_x() >= 17408,
            "one thread per channel for the scaling factors"
        );
        // m < n: channels are the 17408 columns, R is r×n, P is r×m.
        let s = Scratch::for_matrix(5120, 17408, 256);
        assert_eq!(
            s,
            Scratch {
                p: 256 * 5120,
                r: 256 * 17408,
                channels: 17408
            }
        );
        assert!(plan[3].1.threads_x() >= s.r as u64);
    }

    #[test]
    fn params_follow_the_config_and_refuse_what_the_device_lacks() {
        let cfg = ApolloConfig {
            rank: 8,
            weight_decay: 0.1,
            ..Default::default()
        };
        let p = params(&cfg, 64, 48, 7, &Addresses::default()).unwrap();
        assert_eq!((p.right, p.rank, p.gap), (1, 8, cfg.update_proj_gap));
        assert_eq!(p.alpha, cfg.alpha_for(48));
        assert_eq!(p.decay, cfg.lr * 0.1);
        assert_eq!(p.std_dev, 1.0 / 8f32.sqrt());
        assert_eq!(p.use_limiter, 1);
        assert_eq!(
            params(&cfg, 48, 64, 7, &Addresses::default())
                .unwrap()
                .right,
            0
        );
        let err = |c: &ApolloConfig, m, n| {
            params(c, m, n, 1, &Addresses::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(
            &ApolloConfig {
                stochastic_rounding: true,
                ..cfg.clone()
            },
            64,
            48
        )
        .contains("stochastic"));
        assert!(err(&cfg, 64, 8).contains("AdamW"));
        assert!(err(&cfg, 0, 8).contains("empty"));
        assert!(err(
            &ApolloConfig {
                rank: 0,
                ..cfg.clone()
            },
            64,
            48
        )
        .contains("rank"));
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(std::mem::size_of::<ApolloState>(), 72);
        assert_eq!(std::mem::size_of::<ApolloParams>(), 16 * 8 + 8 * 4 + 4 * 4);
    }
}
