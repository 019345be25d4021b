// steering_add: add a per-token steering vector to the residual stream.
//
//   residual[t, i] += table[slot[t], i]     for t < num_tokens, i < hidden
//
// `table` is [num_slots, hidden] row-major; slot 0 is an all-zero row by
// convention ("no steering"), so unsteered tokens are a no-op add.
// Slots are NOT bounds-checked here (the signature carries no num_slots);
// the Rust wrapper checks them on the host in debug/test builds.
//
// No #include on purpose: NVRTC on the GPU host may not have cuda_fp16.h /
// cuda_bf16.h on its include path, so the 16-bit variants take raw bits
// (unsigned short) and convert by hand / with inline PTX. Every variant
// accumulates in f32 and rounds once, matching `residual + table[slot]` in
// PyTorch for the same dtype.
//
// Indexing is 64-bit (num_tokens * hidden can exceed 2^31) and the loop is
// grid-stride, so any launch grid is correct.

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

#define STEERING_LOOP(BODY)                                                    \
    const long long total = (long long)num_tokens * (long long)hidden;         \
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;     \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;     \
         idx < total; idx += stride) {                                         \
        const long long t = idx / hidden;                                      \
        const long long i = idx - t * hidden;                                  \
        const long long src = (long long)slot[t] * hidden + i;                 \
        BODY                                                                   \
    }

extern "C" __global__ void steering_add_f32(float* residual, const float* table,
                                            const int* slot, int num_tokens, int hidden) {
    STEERING_LOOP(residual[idx] += table[src];)
}

extern "C" __global__ void steering_add_bf16(unsigned short* residual, const unsigned short* table,
                                             const int* slot, int num_tokens, int hidden) {
    STEERING_LOOP(residual[idx] = f32_to_bf16(bf16_to_f32(residual[idx]) + bf16_to_f32(table[src]));)
}

extern "C" __global__ void steering_add_f16(unsigned short* residual, const unsigned short* table,
                                            const int* slot, int num_tokens, int hidden) {
    STEERING_LOOP(residual[idx] = f32_to_f16(f16_to_f32(residual[idx]) + f16_to_f32(table[src]));)
}
