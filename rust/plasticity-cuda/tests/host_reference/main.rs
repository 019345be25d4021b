//! The kernels' own source run on the host (compiled with `c++`, one GPU
//! thread after another) against plasticity-core: the projection's random
//! stream bit for bit, the whole Apollo step over many steps, and the steering
//! add bit for bit. Needs a C++
//! compiler; without one the tests say so and pass, unless
//! PLASTICITY_REQUIRE_CXX=1 (scripts/test.sh sets it). One binary for both
//! (each test binary costs ~20-40 s of optimised linking in CI).

mod apollo;
mod projection;
mod steering;
