//! plasticity-core: the math of plasticity with no Python and no CUDA.
//!
//! - [`apollo`]: the Apollo optimizer step (channel-/tensor-wise scaled AdamW
//!   in a random low-rank space, arXiv:2412.05270), in place on f32/bf16/f16
//!   weights with f32 state, plus the plain (HF-style) AdamW step it falls back
//!   to for 1-D and small tensors.
//! - [`rng`]: counter-based Gaussian numbers, so projections are regenerated
//!   from a seed on any device instead of stored.
//! - [`lowrank`]: truncated SVD of a weight delta into LoRA factors.
//! - [`element`]: weight dtypes and (stochastic) rounding.
//! - [`steering`]: per-token steering-vector addition into the residual stream.
//! - [`safetensors_file`]: safetensors headers validated in full, files read one
//!   tensor at a time and written atomically (on the `safetensors` crate).

pub mod apollo;
pub mod element;
pub mod error;
pub mod lowrank;
pub mod merge;
pub mod rng;
pub mod safetensors_file;
pub mod steering;

pub use apollo::{
    adamw_step, apollo_step, AdamConfig, ApolloConfig, MatrixState, ProjectionPrecision, ScaleType,
    StepOutcome, Workspace,
};
pub use element::{DType, Element};
pub use error::{CoreError, Result};
