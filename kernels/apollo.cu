// apollo: Apollo's step on the device (f32 state; f32, bf16 or f16 weights),
// the same arithmetic as plasticity-core's apollo_step, and the Gaussian
// projection P generated on the device from its seed, bit for bit the stream
// of plasticity-core's `rng` (rust/plasticity-core/src/rng.rs):
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
// (rust/plasticity-cuda/tests/host_reference/) with -ffp-contract=off and
// checked against the
// core, so keep it plain C++: no PTX, no shared memory, no __syncthreads (the
// host runs one thread after another), no intrinsics beyond __uint_as_float /
// __float_as_uint and atomicAdd on doubles, no #include.
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

// ---------------------------------------------------------------------------
// The Apollo step (docs/apollo.md), one matrix W (m x n) with gradient G:
//
//   apollo_begin            1 thread      clear this step's flags and sums
//   apollo_projection_step  per pair      P (rank x d) of period step / gap; stored transposed
//                                         (d x rank) when m >= n, so the projection reads it coalesced
//   apollo_gsq_<T>          per channel   sum of G^2 per channel (double); flags non-finite G
//   apollo_project_<T>      per R element R = G P^T (m >= n) or P G (m < n), f32; flags non-finite R
//   apollo_moments          per channel   Adam moments on R, sum N^2 and R^2 per channel (double);
//                                         their totals (tensor scaling) by atomic adds
//   apollo_scale            per channel   scaling factor s_c; sum of s_c^2 gsq_c by atomic adds
//   apollo_limit            1 thread      ||S||, the norm-growth limiter, the step size and the
//                                         coefficient step_size * alpha / L; advances the state
//   apollo_update_<T>       per element   W -= (s_c * coefficient) G, then W -= lr wd W, rounded to T once
//
// Every kernel takes one ApolloParams by value (the host builds one per step) and keeps its
// state in device memory (ApolloState): the step count, the limiter's previous norm, and
// whether this step was skipped. Nothing is read back by the host, so steps queue without a
// synchronisation; a non-finite gradient makes every later kernel of the step a no-op, leaving
// the weight and the state bit-identical, as on the CPU. Arithmetic matches
// plasticity-core's apollo_step operation for operation except the order of the sums in R
// (f32) and of the double sums (channel norms; totals by atomic adds, in no fixed order).
//
// Layouts must match rust/plasticity-cuda/src/apollo.rs (#[repr(C)], no padding).

struct ApolloState {
    unsigned long long step;          // applied steps
    float prev_norm;                  // ||S|| of the last applied step after limiting
    int has_prev;                     // prev_norm is set
    int skipped;                      // this step: 1 = non-finite gradient, nothing written
    int refreshed;                    // this step used a new projection period
    float limiter;                    // this step's L >= 1
    float step_size;                  // this step's bias-corrected step size
    unsigned long long skipped_total; // steps skipped so far
    double total_nsq, total_rsq;      // this step: sum over channels of N^2 and R^2 (tensor scaling)
    double total_ss;                  // this step: sum over channels of s_c^2 gsq_c = ||S||^2
    float coef;                       // this step: step_size * alpha / L
    int pad;
};

struct ApolloParams {
    unsigned long long w, g, p, r, m1, m2, gsq, nsq, rsq, scale, state;  // device addresses
    unsigned long long seed;    // the matrix's seed
    unsigned long long m, n, rank, gap;
    float lr, beta1, beta2, eps;
    float std_dev;              // 1 / sqrt(rank)
    float alpha;                // alpha for d = the compressed dimension
    float gamma;                // norm-growth limit (used when use_limiter)
    float decay;                // lr * weight_decay
    int right;                  // 1: m >= n (R = G P^T, channels are rows); 0: R = P G, channels are columns
    int tensor_scale;           // 1: one factor for the whole matrix (Apollo-Mini)
    int correct_bias;
    int use_limiter;
};

__device__ __forceinline__ unsigned long long rng_derive(unsigned long long seed, unsigned long long label) {
    return rng_mix64((seed + PLASTICITY_GOLDEN) * 3ull ^ rng_mix64(label ^ 0x5851f42d4c957f2dull));
}

// double^int by repeated squaring: compiler-rt's __powidf2, what Rust's f64::powi calls.
__device__ __forceinline__ double powi_f64(double a, int b) {
    const int recip = b < 0;
    double r = 1.0;
    while (1) {
        if (b & 1) r *= a;
        b /= 2;
        if (b == 0) break;
        a *= a;
    }
    return recip ? 1.0 / r : r;
}

__device__ __forceinline__ int finite_f32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// 16-bit formats by bit manipulation (the `half` crate's conversions), so host and device agree.
__device__ __forceinline__ float apollo_bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ unsigned short apollo_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float apollo_f16_to_f32(unsigned short i) {
    if ((i & 0x7fffu) == 0) return __uint_as_float(((unsigned int)i) << 16);
    const unsigned int sign = ((unsigned int)(i & 0x8000u)) << 16;
    const unsigned int exp = i & 0x7c00u;
    const unsigned int man = i & 0x03ffu;
    if (exp == 0x7c00u) {
        if (man == 0) return __uint_as_float(sign | 0x7f800000u);
        return __uint_as_float(sign | 0x7fc00000u | (man << 13));
    }
    if (exp == 0) {  // subnormal: normalise
        int e = 0;
        unsigned int mm = man;
        while ((mm & 0x0400u) == 0) {
            mm <<= 1;
            e += 1;
        }
        // leading_zeros_u16(man) - 6 == e - 1 with this loop's count
        const unsigned int fe = (unsigned int)(127 - 15 - (e - 1)) << 23;
        const unsigned int fm = (man << (14 + (e - 1))) & 0x7fffffu;
        return __uint_as_float(sign | fe | fm);
    }
    const unsigned int fe = (unsigned int)((int)(exp >> 10) - 15 + 127) << 23;
    return __uint_as_float(sign | fe | (man << 13));
}

__device__ __forceinline__ unsigned short apollo_f32_to_f16(float value) {
    const unsigned int x = __float_as_uint(value);
    const unsigned int sign = x & 0x80000000u;
    const unsigned int exp = x & 0x7f800000u;
    const unsigned int man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        const unsigned int nan_bit = man == 0 ? 0u : 0x0200u;
        return (unsigned short)((sign >> 16) | 0x7c00u | nan_bit | (man >> 13));
    }
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
    const unsigned int he = ((unsigned int)half_exp) << 10;
    const unsigned int half_man = man >> 13;
    const unsigned int round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0)
        return (unsigned short)((half_sign | he | half_man) + 1u);
    return (unsigned short)(half_sign | he | half_man);
}

#define APOLLO_STATE(a) ((ApolloState*)(a).state)
#define APOLLO_FOR(i, count)                                                              \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (count); i += (unsigned long long)gridDim.x * blockDim.x)

extern "C" __global__ void apollo_begin(ApolloParams a) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        ApolloState* st = APOLLO_STATE(a);
        st->skipped = 0;
        st->refreshed = st->step % a.gap == 0ull;
        st->total_nsq = 0.0;
        st->total_rsq = 0.0;
        st->total_ss = 0.0;
    }
}

// P for this step's period: element k = std * normal stream (derive(seed, step / gap)) element k.
extern "C" __global__ void apollo_projection_step(ApolloParams a) {
    const ApolloState* st = APOLLO_STATE(a);
    const unsigned long long seed = rng_derive(a.seed, st->step / a.gap);
    const unsigned long long d = a.right ? a.n : a.m;
    const unsigned long long len = a.rank * d;
    float* out = (float*)a.p;
    APOLLO_FOR(pair, (len + 1ull) / 2ull) {
        float x, y;
        rng_normal_pair(seed, pair, &x, &y);
        for (unsigned long long h = 0; h < 2ull; ++h) {
            const unsigned long long e = 2ull * pair + h;  // element (k, j) of P, row-major rank x d
            if (e >= len) break;
            const float v = (h == 0ull ? x : y) * a.std_dev;
            // m >= n: store P^T (d x rank): threads of one R row read consecutive k.
            out[a.right ? (e % d) * a.rank + e / d : e] = v;
        }
    }
}

// ELEM: the weight's storage type; LOAD: its value as f32; STORE: f32 to ELEM, rounded once.
#define APOLLO_TYPED(DT, ELEM, LOAD, STORE)                                                   \
    extern "C" __global__ void apollo_gsq_##DT(ApolloParams a) {                              \
        const ELEM* g = (const ELEM*)a.g;                                                     \
        double* gsq = (double*)a.gsq;                                                         \
        const unsigned long long channels = a.right ? a.m : a.n;                              \
        APOLLO_FOR(c, channels) {                                                             \
            double acc = 0.0;                                                                 \
            int finite = 1;                                                                   \
            if (a.right) {                                                                    \
                for (unsigned long long j = 0; j < a.n; ++j) {                                \
                    const float v = LOAD(g[c * a.n + j]);                                     \
                    finite &= finite_f32(v);                                                  \
                    acc += (double)v * (double)v;                                             \
                }                                                                             \
            } else {                                                                          \
                for (unsigned long long i = 0; i < a.m; ++i) {                                \
                    const float v = LOAD(g[i * a.n + c]);                                     \
                    finite &= finite_f32(v);                                                  \
                    acc += (double)v * (double)v;                                             \
                }                                                                             \
            }                                                                                 \
            gsq[c] = acc;                                                                     \
            if (!finite) APOLLO_STATE(a)->skipped = 1;                                        \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void apollo_project_##DT(ApolloParams a) {                          \
        const ELEM* g = (const ELEM*)a.g;                                                     \
        const float* p = (const float*)a.p;                                                   \
        float* r = (float*)a.r;                                                               \
        if (a.right) { /* R[i, k] = sum_j G[i, j] P^T[j, k]; R is m x rank */                 \
            APOLLO_FOR(e, a.m * a.rank) {                                                     \
                const unsigned long long i = e / a.rank, k = e % a.rank;                      \
                float acc = 0.0f;                                                             \
                for (unsigned long long j = 0; j < a.n; ++j)                                  \
                    acc += LOAD(g[i * a.n + j]) * p[j * a.rank + k];                          \
                r[e] = acc;                                                                   \
                if (!finite_f32(acc)) APOLLO_STATE(a)->skipped = 1;                           \
            }                                                                                 \
        } else { /* R[k, c] = sum_i P[k, i] G[i, c]; R is rank x n */                          \
            APOLLO_FOR(e, a.rank * a.n) {                                                     \
                const unsigned long long k = e / a.n, c = e % a.n;                            \
                float acc = 0.0f;                                                             \
                for (unsigned long long i = 0; i < a.m; ++i)                                  \
                    acc += p[k * a.m + i] * LOAD(g[i * a.n + c]);                             \
                r[e] = acc;                                                                   \
                if (!finite_f32(acc)) APOLLO_STATE(a)->skipped = 1;                           \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void apollo_update_##DT(ApolloParams a) {                           \
        if (APOLLO_STATE(a)->skipped) return;                                                 \
        ELEM* w = (ELEM*)a.w;                                                                 \
        const ELEM* g = (const ELEM*)a.g;                                                     \
        const float* coef = (const float*)a.scale;                                            \
        const float k = APOLLO_STATE(a)->coef;                                                \
        APOLLO_FOR(e, a.m * a.n) {                                                            \
            const float c = coef[a.right ? e / a.n : e % a.n] * k;                            \
            float x = LOAD(w[e]) - c * LOAD(g[e]);                                            \
            if (a.decay > 0.0f) x -= a.decay * x;                                             \
            w[e] = STORE(x);                                                                  \
        }                                                                                     \
    }

__device__ __forceinline__ float apollo_load_f32(float x) { return x; }
__device__ __forceinline__ float apollo_store_f32(float x) { return x; }

APOLLO_TYPED(f32, float, apollo_load_f32, apollo_store_f32)
APOLLO_TYPED(bf16, unsigned short, apollo_bf16_to_f32, apollo_f32_to_bf16)
APOLLO_TYPED(f16, unsigned short, apollo_f16_to_f32, apollo_f32_to_f16)

// Adam moments on R, and per channel sum N^2 and sum R^2 (N = M / (sqrt(V) + eps)).
extern "C" __global__ void apollo_moments(ApolloParams a) {
    if (APOLLO_STATE(a)->skipped) return;
    const float* r = (const float*)a.r;
    float* m1 = (float*)a.m1;
    float* m2 = (float*)a.m2;
    double* nsq = (double*)a.nsq;
    double* rsq = (double*)a.rsq;
    const float c1 = 1.0f - a.beta1, c2 = 1.0f - a.beta2;
    const unsigned long long channels = a.right ? a.m : a.n;
    APOLLO_FOR(c, channels) {
        double na = 0.0, ra = 0.0;
        for (unsigned long long k = 0; k < a.rank; ++k) {
            const unsigned long long e = a.right ? c * a.rank + k : k * a.n + c;
            const float x = r[e];
            const float mv = a.beta1 * m1[e] + c1 * x;
            const float vv = a.beta2 * m2[e] + c2 * x * x;
            m1[e] = mv;
            m2[e] = vv;
            const float nv = mv / (sqrtf(vv) + a.eps);
            na += (double)nv * (double)nv;
            ra += (double)x * (double)x;
        }
        nsq[c] = na;
        rsq[c] = ra;
        if (a.tensor_scale) {
            atomicAdd(&APOLLO_STATE(a)->total_nsq, na);
            atomicAdd(&APOLLO_STATE(a)->total_rsq, ra);
        }
    }
}

// Per channel: s_c = ||N_c|| / (||R_c|| + 1e-8) (or the tensor-wide factor from the totals),
// and ||S||^2 = sum s_c^2 gsq_c by atomic adds.
extern "C" __global__ void apollo_scale(ApolloParams a) {
    ApolloState* st = APOLLO_STATE(a);
    if (st->skipped) return;
    const double* gsq = (const double*)a.gsq;
    const double* nsq = (const double*)a.nsq;
    const double* rsq = (const double*)a.rsq;
    float* scale = (float*)a.scale;
    const unsigned long long channels = a.right ? a.m : a.n;
    APOLLO_FOR(c, channels) {
        const float s = a.tensor_scale ? (float)(sqrt(st->total_nsq) / (sqrt(st->total_rsq) + 1e-8))
                                       : (float)(sqrt(nsq[c]) / (sqrt(rsq[c]) + 1e-8));
        scale[c] = s;
        atomicAdd(&st->total_ss, (double)s * (double)s * gsq[c]);
    }
}

// One thread: ||S||, the limiter, the step size and the coefficient; advances the state. A
// skipped step only counts.
extern "C" __global__ void apollo_limit(ApolloParams a) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    ApolloState* st = APOLLO_STATE(a);
    if (st->skipped) {
        st->skipped_total += 1ull;
        return;
    }
    const double s_norm = sqrt(st->total_ss);
    float limiter = 1.0f;
    if (a.use_limiter) {
        if (st->has_prev) {
            const float ratio = (float)s_norm / (st->prev_norm + 1e-8f);
            limiter = fmaxf(ratio, a.gamma) / a.gamma;
            st->prev_norm = (float)s_norm / limiter;
        } else {
            st->prev_norm = (float)s_norm;
            st->has_prev = 1;
        }
    }
    st->step += 1ull;
    float step_size = a.lr;
    if (a.correct_bias) {
        const unsigned long long t64 = st->step < 2147483647ull ? st->step : 2147483647ull;
        const int t = (int)t64;
        step_size = (float)((double)a.lr * sqrt(1.0 - powi_f64((double)a.beta2, t))
                            / (1.0 - powi_f64((double)a.beta1, t)));
    }
    st->limiter = limiter;
    st->step_size = step_size;
    st->coef = step_size * a.alpha / limiter;
}
