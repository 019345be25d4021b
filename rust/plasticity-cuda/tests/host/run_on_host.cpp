// Runs a kernel file from kernels/ on the host, thread by thread, so a test can
// compare the device arithmetic with plasticity-core's without a GPU.
// Built by tests/host_reference/projection.rs with
//   c++ -O2 -ffp-contract=off -DPLASTICITY_KERNEL='"…/kernels/apollo.cu"'
// (no FMA contraction: the kernel is compiled with --fmad=false on the device).
//
// Usage: run_on_host SEED STD_BITS START LEN GRID BLOCK > floats (raw little-endian f32)

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

// The CUDA names the kernel uses, for one host thread that plays every GPU thread in turn.
struct plasticity_dim3 { unsigned int x, y, z; };
static plasticity_dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __device__
#define __global__
#define __forceinline__ inline
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
static inline double atomicAdd(double* address, double v) { double old = *address; *address = old + v; return old; }

#include PLASTICITY_KERNEL

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s SEED STD_BITS START LEN GRID BLOCK\n", argv[0]);
        return 2;
    }
    const unsigned long long seed = std::strtoull(argv[1], nullptr, 10);
    const float std_dev = __uint_as_float((unsigned int)std::strtoul(argv[2], nullptr, 10));
    const unsigned long long start = std::strtoull(argv[3], nullptr, 10);
    const unsigned long long len = std::strtoull(argv[4], nullptr, 10);
    const unsigned int grid = (unsigned int)std::strtoul(argv[5], nullptr, 10);
    const unsigned int block = (unsigned int)std::strtoul(argv[6], nullptr, 10);
    // NaN-filled: an element no thread writes shows up as a mismatch.
    std::vector<float> out(len, std::nanf(""));
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        for (unsigned int t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            apollo_fill_normal(out.data(), seed, std_dev, start, len);
        }
    }
    std::fwrite(out.data(), sizeof(float), out.size(), stdout);
    return 0;
}
