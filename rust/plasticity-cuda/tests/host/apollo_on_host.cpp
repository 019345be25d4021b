// kernels/apollo.cu as a host shared library: host_launch(entry, grid, block, params) plays
// every GPU thread of one launch in turn, so tests/host_reference/apollo.rs can drive the
// device step's own plan (plasticity_cuda::apollo::step_plan) on the CPU and compare it with
// plasticity-core. Built with c++ -O2 -ffp-contract=off -shared -fPIC
// -DPLASTICITY_KERNEL='"…/kernels/apollo.cu"'. Correct because the kernels use no shared
// memory and no barriers: each thread's work depends only on earlier launches (atomic adds
// only sum, in whatever order).

#include <cmath>
#include <cstring>

struct plasticity_dim3 { unsigned int x, y, z; };
static plasticity_dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __device__
#define __global__
#define __forceinline__ inline
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
// One host thread plays every GPU thread in turn: an atomic add is a plain add.
static inline double atomicAdd(double* address, double v) { double old = *address; *address = old + v; return old; }

#include PLASTICITY_KERNEL

typedef void (*apollo_kernel)(ApolloParams);

struct entry { const char* name; apollo_kernel fn; };
static const entry ENTRIES[] = {
    {"apollo_begin", apollo_begin},
    {"apollo_projection_step", apollo_projection_step},
    {"apollo_moments", apollo_moments},
    {"apollo_scale", apollo_scale},
    {"apollo_limit", apollo_limit},
    {"apollo_gsq_f32", apollo_gsq_f32}, {"apollo_gsq_bf16", apollo_gsq_bf16}, {"apollo_gsq_f16", apollo_gsq_f16},
    {"apollo_project_f32", apollo_project_f32}, {"apollo_project_bf16", apollo_project_bf16},
    {"apollo_project_f16", apollo_project_f16},
    {"apollo_update_f32", apollo_update_f32}, {"apollo_update_bf16", apollo_update_bf16},
    {"apollo_update_f16", apollo_update_f16},
};

// 0: ran; 1: unknown entry point.
extern "C" int host_launch(const char* name, unsigned int grid, unsigned int block, const ApolloParams* p) {
    for (const entry& e : ENTRIES) {
        if (std::strcmp(e.name, name) != 0) continue;
        gridDim = {grid, 1, 1};
        blockDim = {block, 1, 1};
        for (unsigned int b = 0; b < grid; ++b) {
            for (unsigned int t = 0; t < block; ++t) {
                blockIdx = {b, 0, 0};
                threadIdx = {t, 0, 0};
                e.fn(*p);
            }
        }
        return 0;
    }
    return 1;
}

extern "C" unsigned long host_sizes(int which) {
    return which == 0 ? sizeof(ApolloState) : sizeof(ApolloParams);
}

// The kernels' 16-bit conversions, for a test against the `half` crate.
extern "C" unsigned short host_f32_to_f16(float x) { return apollo_f32_to_f16(x); }
extern "C" float host_f16_to_f32(unsigned short h) { return apollo_f16_to_f32(h); }
extern "C" unsigned short host_f32_to_bf16(float x) { return apollo_f32_to_bf16(x); }
