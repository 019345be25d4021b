// kernels/steering_add.cu as a host shared library: host_steer(entry, grid, block, ...) plays
// every GPU thread of one launch in turn (2-D grid: blockIdx.y strides over tokens), so
// tests/host_reference/steering.rs can drive the crate's own launch decisions
// (plasticity_cuda::launch::steering_plan, steering_entry) on the CPU against plasticity-core's
// steering::add_rows. Built with c++ -O2 -ffp-contract=off -shared -fPIC
// -DPLASTICITY_KERNEL='"…/kernels/steering_add.cu"'.

#include <cmath>
#include <cstring>

struct plasticity_dim3 { unsigned int x, y, z; };
static plasticity_dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __device__
#define __global__
#define __forceinline__ inline
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }

#include PLASTICITY_KERNEL

typedef void (*steer_fn)(void*, const void*, const void*, int, int, int);
struct entry { const char* name; steer_fn fn; };
#define E(NAME, ELEM, IDX)                                                             \
    {#NAME, [](void* r, const void* t, const void* s, int n, int h, int k) {          \
         NAME((ELEM*)r, (const ELEM*)t, (const IDX*)s, n, h, k);                        \
     }}
#define ES(DT, ELEM)                                                                   \
    E(steering_add_##DT##_i32, ELEM, int), E(steering_add_##DT##_i64, ELEM, long long), \
    E(steering_add_##DT##_i32_v16, ELEM, int), E(steering_add_##DT##_i64_v16, ELEM, long long)
static const entry ENTRIES[] = {ES(f32, float), ES(bf16, unsigned short), ES(f16, unsigned short)};

// 0: ran; 1: unknown entry point.
extern "C" int host_steer(const char* name, unsigned int gx, unsigned int gy, unsigned int bx, void* residual,
                          const void* table, const void* slot, int num_tokens, int hidden, int num_slots) {
    for (const entry& e : ENTRIES) {
        if (std::strcmp(e.name, name) != 0) continue;
        gridDim = {gx, gy, 1};
        blockDim = {bx, 1, 1};
        for (unsigned int y = 0; y < gy; ++y)
            for (unsigned int x = 0; x < gx; ++x)
                for (unsigned int t = 0; t < bx; ++t) {
                    blockIdx = {x, y, 0};
                    threadIdx = {t, 0, 0};
                    e.fn(residual, table, slot, num_tokens, hidden, num_slots);
                }
        return 0;
    }
    return 1;
}
