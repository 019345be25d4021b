//! Everything of this crate that needs a GPU, in one test binary (each binary
//! costs ~20-40 s of optimised linking in CI): the steering kernel, the
//! projection and the Apollo step against the CPU. Every test skips with a
//! `skipped:` line without a driver, NVRTC or device; scripts/gpu_check.sh
//! runs this binary on a GPU machine, where a skip is a failure.

#[path = "../common/mod.rs"]
mod common;

mod apollo_step;
mod projection;
mod steering_add;
