// apollo_projection: Apollo's Gaussian projection P, generated on the device
// from its seed, bit for bit the stream of plasticity-core's `rng`
// (rust/plasticity-core/src/rng.rs):
//
//   element k of stream `seed` = component k % 2 of normal_pair(seed, k / 2), times `std`
//   normal_pair: 64 bits = SplitMix64(seed + (k/2 + 1) * golden), Box-Muller on
//   u1 = (top 24 bits + 1) / 2^24 and u2 = (next 24 bits) / 2^24, with the same
//   polynomial ln and sincos(2*pi*u) as the CPU.
//
// Identity with the CPU depends on IEEE single-precision arithmetic, operation
// for operation: the crate compiles this file with --fmad=false (no a*b+c
// contracted into one rounding), --prec-div=true, --prec-sqrt=true and
// --ftz=false. The same source is compiled for the host by a test
// (rust/plasticity-cuda/tests/projection_host_reference.rs) with
// -ffp-contract=off and checked against the core's stream, so keep it plain
// C++: no PTX, no intrinsics beyond __uint_as_float / __float_as_uint, no
// #include.
//
// The seed passed in is the period's stream seed, rng::derive(matrix seed,
// period), formed on the host by the same function the CPU path uses.

#define PLASTICITY_GOLDEN 0x9e3779b97f4a7c15ull
#define PLASTICITY_SQRT_2 1.41421356237309504880f
#define PLASTICITY_LN_2 0.693147180559945309417f
#define PLASTICITY_FRAC_PI_2 1.57079632679489661923f

__device__ __forceinline__ unsigned long long rng_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long rng_bits(unsigned long long seed, unsigned long long index) {
    return rng_mix64(seed + (index + 1ull) * PLASTICITY_GOLDEN);
}

// ln x for x in (0, 1]: x = 2^e * m, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(t).
__device__ __forceinline__ float rng_fast_ln(float x) {
    const unsigned int bits = __float_as_uint(x);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    if (m > PLASTICITY_SQRT_2) {
        m = m * 0.5f;
        e += 1;
    }
    const float t = (m - 1.0f) / (m + 1.0f);
    const float t2 = t * t;
    const float poly = 1.0f + t2 * (1.0f / 3.0f + t2 * (1.0f / 5.0f + t2 * (1.0f / 7.0f
                     + t2 * (1.0f / 9.0f + t2 * (1.0f / 11.0f)))));
    return 2.0f * t * poly + (float)e * PLASTICITY_LN_2;
}

// (sin 2*pi*u, cos 2*pi*u) for u in [0, 1).
__device__ __forceinline__ void rng_sincos_2pi(float u, float* sin_out, float* cos_out) {
    const float v = u * 4.0f;
    const float q = floorf(v + 0.5f);
    const float a = (v - q) * PLASTICITY_FRAC_PI_2;
    const float a2 = a * a;
    const float s = a * (1.0f + a2 * (-1.0f / 6.0f + a2 * (1.0f / 120.0f + a2 * (-1.0f / 5040.0f
                  + a2 * (1.0f / 362880.0f)))));
    const float c = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24.0f + a2 * (-1.0f / 720.0f
                  + a2 * (1.0f / 40320.0f))));
    const int qi = (int)q;
    float x = (qi & 1) ? c : s;
    float y = (qi & 1) ? s : c;
    if (qi & 2) x = -x;
    if ((qi + 1) & 2) y = -y;
    *sin_out = x;
    *cos_out = y;
}

__device__ __forceinline__ void rng_normal_pair(unsigned long long seed, unsigned long long index,
                                                float* first, float* second) {
    const unsigned long long b = rng_bits(seed, index);
    const float u1 = (float)((unsigned int)(b >> 40) + 1u) * (1.0f / 16777216.0f);
    const float u2 = (float)((unsigned int)((b >> 16) & 0xffffffull)) * (1.0f / 16777216.0f);
    const float r = sqrtf(-2.0f * rng_fast_ln(u1));
    float s, c;
    rng_sincos_2pi(u2, &s, &c);
    *first = r * c;
    *second = r * s;
}

// out[i] = std * element (start + i) of stream `seed`, for i < len.
// One thread per pair of the stream; grid-stride, so any grid is correct.
extern "C" __global__ void apollo_fill_normal(float* out, unsigned long long seed, float std_dev,
                                              unsigned long long start, unsigned long long len) {
    const unsigned long long end = start + len;
    const unsigned long long first_pair = start / 2ull;
    const unsigned long long pairs = (end + 1ull) / 2ull - first_pair;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pairs; p += stride) {
        const unsigned long long pair = first_pair + p;
        float a, b;
        rng_normal_pair(seed, pair, &a, &b);
        const unsigned long long k = 2ull * pair;
        if (k >= start && k < end) out[k - start] = a * std_dev;
        if (k + 1ull >= start && k + 1ull < end) out[k + 1ull - start] = b * std_dev;
    }
}
