// steering_add: add a per-token steering vector to the residual stream.
//
//   residual[t, i] += table[slot[t], i]     for t < num_tokens, i < hidden
//
// The same contract as the CPU path (plasticity-core's steering::add_rows):
// - `table` is [num_slots, hidden] row-major; slot 0 is "not steered" and its
//   row is never read, so an unsteered token costs one index load;
// - a slot outside 1..num_slots-1 (negative, or past the table) leaves its
//   token untouched: the kernel cannot raise, so it never reads outside the
//   table instead (the CPU path refuses such a slot before any write; on the
//   device the runner that fills the slots is the only writer).
//
// Launch shape (chosen on the host, rust/plasticity-cuda/src/launch.rs):
// blockIdx.y strides over tokens, blockIdx.x * blockDim.x + threadIdx.x over
// the vectors of one row. The `_v16` variants move 16 bytes per load (float4,
// or 8 halves in a uint4); the host takes them only when hidden * sizeof(elem)
// is a multiple of 16 and both base addresses are 16-byte aligned. The plain
// variants move one element. Capturable in a CUDA graph: no allocation, no
// host synchronisation, and every address is an argument.
//
// No #include on purpose: NVRTC on the GPU host may not have cuda_fp16.h /
// cuda_bf16.h on its include path, so the 16-bit variants take raw bits
// (unsigned short) and convert by hand / with inline PTX (on the host, where a
// test runs this file thread by thread, by hand too). Every variant adds
// in f32 and rounds once, matching `residual + table[slot]` in PyTorch for
// the same dtype.

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round-to-nearest-even f32 -> bf16; NaN stays a (quiet) NaN.
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

#ifdef __CUDACC_RTC__
// On the device: the hardware conversions (round to nearest even).
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// On the host (rust/plasticity-cuda/tests/host_reference/steering.rs runs this file with c++):
// the same conversions by bit manipulation, as the `half` crate does them.
__device__ __forceinline__ float f16_to_f32(unsigned short i) {
    if ((i & 0x7fffu) == 0) return __uint_as_float(((unsigned int)i) << 16);
    const unsigned int sign = ((unsigned int)(i & 0x8000u)) << 16;
    const unsigned int exp = i & 0x7c00u, man = i & 0x03ffu;
    if (exp == 0x7c00u) return __uint_as_float(sign | 0x7f800000u | (man ? 0x00400000u | (man << 13) : 0u));
    if (exp == 0) {
        int e = 0;
        unsigned int mm = man;
        while ((mm & 0x0400u) == 0) { mm <<= 1; e += 1; }
        return __uint_as_float(sign | ((unsigned int)(127 - 15 - (e - 1)) << 23) | ((man << (14 + (e - 1))) & 0x7fffffu));
    }
    return __uint_as_float(sign | ((unsigned int)((int)(exp >> 10) - 15 + 127) << 23) | (man << 13));
}

__device__ __forceinline__ unsigned short f32_to_f16(float value) {
    const unsigned int x = __float_as_uint(value);
    const unsigned int sign = x & 0x80000000u, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) return (unsigned short)((sign >> 16) | 0x7c00u | (man ? 0x0200u : 0u) | (man >> 13));
    const unsigned int half_sign = sign >> 16;
    const int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) return (unsigned short)(half_sign | 0x7c00u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return (unsigned short)half_sign;
        const unsigned int mm = man | 0x00800000u;
        unsigned int half_man = mm >> (14 - half_exp);
        const unsigned int round_bit = 1u << (13 - half_exp);
        if ((mm & round_bit) != 0 && (mm & (3u * round_bit - 1u)) != 0) half_man += 1;
        return (unsigned short)(half_sign | half_man);
    }
    const unsigned int bits = half_sign | ((unsigned int)half_exp << 10) | (man >> 13);
    const unsigned int round_bit = 0x00001000u;
    return (unsigned short)(((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) ? bits + 1u : bits);
}
#endif

// Element-wise sums, one per (element type, vector width).
__device__ __forceinline__ float add_f32(float a, float b) { return a + b; }
__device__ __forceinline__ unsigned short add_bf16(unsigned short a, unsigned short b) {
    return f32_to_bf16(bf16_to_f32(a) + bf16_to_f32(b));
}
__device__ __forceinline__ unsigned short add_f16(unsigned short a, unsigned short b) {
    return f32_to_f16(f16_to_f32(a) + f16_to_f32(b));
}

__device__ __forceinline__ float4 add_f32_v16(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// Two 16-bit values per 32-bit word, low half first (little-endian memory order).
#define PAIR_ADD(NAME, ADD1)                                                     \
    __device__ __forceinline__ unsigned int NAME(unsigned int a, unsigned int b) { \
        unsigned short lo = ADD1((unsigned short)(a & 0xffffu), (unsigned short)(b & 0xffffu)); \
        unsigned short hi = ADD1((unsigned short)(a >> 16), (unsigned short)(b >> 16)); \
        return ((unsigned int)hi << 16) | (unsigned int)lo;                      \
    }
PAIR_ADD(add_bf16_pair, add_bf16)
PAIR_ADD(add_f16_pair, add_f16)

__device__ __forceinline__ uint4 add_bf16_v16(uint4 a, uint4 b) {
    return make_uint4(add_bf16_pair(a.x, b.x), add_bf16_pair(a.y, b.y),
                      add_bf16_pair(a.z, b.z), add_bf16_pair(a.w, b.w));
}
__device__ __forceinline__ uint4 add_f16_v16(uint4 a, uint4 b) {
    return make_uint4(add_f16_pair(a.x, b.x), add_f16_pair(a.y, b.y),
                      add_f16_pair(a.z, b.z), add_f16_pair(a.w, b.w));
}

// NAME(ELEM* residual, const ELEM* table, const IDX* slot, int num_tokens, int hidden, int num_slots)
// VEC: the type one thread loads (ELEM itself, or a 16-byte vector of ELEMs).
#define STEERING_KERNEL(NAME, ELEM, IDX, VEC, ADD)                                          \
    extern "C" __global__ void NAME(ELEM* residual, const ELEM* table, const IDX* slot,     \
                                    int num_tokens, int hidden, int num_slots) {            \
        const long long per_row = (long long)hidden / (long long)(sizeof(VEC) / sizeof(ELEM)); \
        const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;           \
        const long long stride = (long long)gridDim.x * blockDim.x;                         \
        for (long long t = blockIdx.y; t < num_tokens; t += gridDim.y) {                    \
            const long long s = (long long)slot[t];                                         \
            if (s <= 0 || s >= (long long)num_slots) continue;                              \
            VEC* r = (VEC*)(residual + t * (long long)hidden);                              \
            const VEC* a = (const VEC*)(table + s * (long long)hidden);                     \
            for (long long i = first; i < per_row; i += stride) {                           \
                r[i] = ADD(r[i], a[i]);                                                     \
            }                                                                               \
        }                                                                                   \
    }

#define STEERING_KERNELS(DT, ELEM, ADD1, VEC16, ADD16)                              \
    STEERING_KERNEL(steering_add_##DT##_i32, ELEM, int, ELEM, ADD1)                 \
    STEERING_KERNEL(steering_add_##DT##_i64, ELEM, long long, ELEM, ADD1)           \
    STEERING_KERNEL(steering_add_##DT##_i32_v16, ELEM, int, VEC16, ADD16)           \
    STEERING_KERNEL(steering_add_##DT##_i64_v16, ELEM, long long, VEC16, ADD16)

STEERING_KERNELS(f32, float, add_f32, float4, add_f32_v16)
STEERING_KERNELS(bf16, unsigned short, add_bf16, uint4, add_bf16_v16)
STEERING_KERNELS(f16, unsigned short, add_f16, uint4, add_f16_v16)
