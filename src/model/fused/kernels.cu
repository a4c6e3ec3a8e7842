// CUDA kernels for the fused training ops of src/model/fused/: the same arithmetic as the CPU
// kernels beside this file, for f32 and bf16 storage. All sums, norms and exponentials are
// computed in f32 whatever the storage type, so bf16 runs keep f32 statistics.
//
// build.rs compiles this file to PTX with nvcc when the `cuda` feature is on; cuda.rs loads it
// and launches these kernels. Row kernels run one block per row (blockDim a multiple of 32);
// elementwise kernels use a grid-stride loop.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16 *p, size_t i, float v) { p[i] = __float2bfloat16(v); }

// The sum (or max) of `v` over the block, returned to every thread.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads(); // an earlier call may still be reading partial[0]
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? partial[lane] : (is_max ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            const float u = __shfl_xor_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, u) : v + u;
        }
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    return partial[0];
}

// softmax(scale · x + causal mask) over rows of length n; row r is query r % t, at position
// pos + r % t, and sees keys 0..=pos + r % t. Masked entries are 0.
template <typename T>
__device__ void causal_softmax_fwd(const T *x, T *y, int n, int t, float scale, int pos) {
    const size_t row = blockIdx.x;
    const T *xr = x + row * n;
    T *yr = y + row * n;
    const int visible = min(pos + (int)(row % t) + 1, n);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, load(xr, j) * scale);
    m = block_reduce(m, true);
    float s = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) s += expf(load(xr, j) * scale - m);
    s = block_reduce(s, false);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        store(yr, j, j < visible ? expf(load(xr, j) * scale - m) / s : 0.0f);
}

// dL/dx = scale · y ⊙ (g − Σⱼ gⱼ yⱼ), row by row.
template <typename T>
__device__ void softmax_bwd(const T *y, const T *g, T *d, int n, float scale) {
    const size_t row = blockIdx.x;
    const T *yr = y + row * n, *gr = g + row * n;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += load(yr, j) * load(gr, j);
    dot = block_reduce(dot, false);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        store(d + row * n, j, scale * load(yr, j) * (load(gr, j) - dot));
}

// The row's sqrt(mean(x²) + eps).
template <typename T>
__device__ float row_rms(const T *xr, int n, float eps) {
    float ss = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = load(xr, j);
        ss += v * v;
    }
    return sqrtf(block_reduce(ss, false) / n + eps);
}

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, int n, float eps) {
    const size_t row = blockIdx.x;
    const T *xr = x + row * n;
    const float s = row_rms(xr, n, eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) store(y + row * n, j, load(xr, j) / s * load(w, j));
}

// dL/dx = (g⊙w − x̂ · mean(g⊙w⊙x̂)) / s with x̂ = x / s.
template <typename T>
__device__ void rms_norm_dx(const T *x, const T *w, const T *g, T *d, int n, float eps) {
    const size_t row = blockIdx.x;
    const T *xr = x + row * n, *gr = g + row * n;
    const float s = row_rms(xr, n, eps);
    float dot = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += load(gr, j) * load(w, j) * (load(xr, j) / s);
    const float m = block_reduce(dot, false) / n;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        store(d + row * n, j, (load(gr, j) * load(w, j) - load(xr, j) / s * m) / s);
}

// The row scales s (f32), one block per row: the first of the three passes of dL/dw.
template <typename T>
__device__ void rms_row_scale(const T *x, float *s, int n, float eps) {
    const float r = row_rms(x + (size_t)blockIdx.x * n, n, eps);
    if (threadIdx.x == 0) s[blockIdx.x] = r;
}

// partial[c, j] = Σ over the rows of chunk c of g⊙x/s (grid: column blocks × chunks).
template <typename T>
__device__ void rms_dw_partial(const T *x, const T *g, const float *s, float *partial, int n, int rows,
                               int chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const int r0 = blockIdx.y * chunk, r1 = min(r0 + chunk, rows);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += load(g, (size_t)r * n + j) * (load(x, (size_t)r * n + j) / s[r]);
    partial[(size_t)blockIdx.y * n + j] = acc;
}

// dw[j] = Σ_c partial[c, j], chunks added in order: the same sum on every run.
template <typename T>
__device__ void rms_dw_sum(const float *partial, T *dw, int n, int chunks) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; c++) acc += partial[(size_t)c * n + j];
    store(dw, j, acc);
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#define GRID_STRIDE(i, count) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (count); i += (size_t)gridDim.x * blockDim.x)

template <typename T>
__device__ void swiglu_fwd(const T *g, const T *u, T *y, size_t count) {
    GRID_STRIDE(i, count) {
        const float gi = load(g, i);
        store(y, i, gi / (1.0f + expf(-gi)) * load(u, i));
    }
}

// dL/dg = d ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))).
template <typename T>
__device__ void swiglu_dg(const T *g, const T *u, const T *d, T *out, size_t count) {
    GRID_STRIDE(i, count) {
        const float gi = load(g, i), s = sigmoid(gi);
        store(out, i, load(d, i) * load(u, i) * (s * (1.0f + gi * (1.0f - s))));
    }
}

// dL/du = d ⊙ silu(g).
template <typename T>
__device__ void swiglu_du(const T *g, const T *d, T *out, size_t count) {
    GRID_STRIDE(i, count) {
        const float gi = load(g, i);
        store(out, i, load(d, i) * (gi / (1.0f + expf(-gi))));
    }
}

// Rotary embedding of x (rows of hs = 2·half, row r at position r % t), with cos and sin
// (t, half). `interleaved` pairs 2i with 2i+1, else i with i + half; `inverse` rotates by −θ.
template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, int t, int half, int interleaved,
                     int inverse, size_t pairs) {
    GRID_STRIDE(k, pairs) {
        const size_t row = k / half;
        const int i = k % half, p = row % t;
        const float c = load(cos, (size_t)p * half + i);
        const float s = inverse ? -load(sin, (size_t)p * half + i) : load(sin, (size_t)p * half + i);
        const size_t base = row * 2 * half;
        const size_t a = base + (interleaved ? 2 * i : i), b = base + (interleaved ? 2 * i + 1 : i + half);
        const float xa = load(x, a), xb = load(x, b);
        store(y, a, xa * c + (-xb) * s);
        store(y, b, xb * c + xa * s);
    }
}

// NF4 with double-quantized scales, as bitsandbytes stores it (src/model/quant/nf4.rs): one
// thread a byte of codes (two values, the first in the high nibble), blocks of 64 values, one
// 8-bit scale code a block into `dynamic`, one f32 `nested` scale per 256 blocks. The _rn
// intrinsics keep nvcc from fusing the multiply and add, so the bits are bitsandbytes'.
__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

extern "C" __global__ void whet_nf4_dequant(const uint8_t *packed, const uint8_t *absmax_q, const float *nested,
                                            const float *dynamic, float offset, float *out, size_t n) {
    const size_t bytes = (n + 1) / 2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < bytes; i += (size_t)blockDim.x * gridDim.x) {
        const size_t e = 2 * i, b = e / 64;
        const float absmax = __fadd_rn(__fmul_rn(dynamic[absmax_q[b]], nested[b / 256]), offset);
        const uint8_t byte = packed[i];
        out[e] = __fmul_rn(NF4_CODE[byte >> 4], absmax);
        if (e + 1 < n) out[e + 1] = __fmul_rn(NF4_CODE[byte & 15], absmax);
    }
}

// The entry points cuda.rs loads, one per kernel and storage type: whet_<kernel>_<f32|bf16>.
#define ENTRIES(T, SUFFIX)                                                                                   \
    extern "C" __global__ void whet_causal_softmax_fwd_##SUFFIX(const T *x, T *y, int n, int t, float scale, \
                                                                int pos) {                                  \
        causal_softmax_fwd(x, y, n, t, scale, pos);                                                          \
    }                                                                                                        \
    extern "C" __global__ void whet_softmax_bwd_##SUFFIX(const T *y, const T *g, T *d, int n, float scale) { \
        softmax_bwd(y, g, d, n, scale);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void whet_rms_norm_fwd_##SUFFIX(const T *x, const T *w, T *y, int n, float eps) {  \
        rms_norm_fwd(x, w, y, n, eps);                                                                       \
    }                                                                                                        \
    extern "C" __global__ void whet_rms_norm_dx_##SUFFIX(const T *x, const T *w, const T *g, T *d, int n,    \
                                                         float eps) {                                        \
        rms_norm_dx(x, w, g, d, n, eps);                                                                     \
    }                                                                                                        \
    extern "C" __global__ void whet_rms_row_scale_##SUFFIX(const T *x, float *s, int n, float eps) {         \
        rms_row_scale(x, s, n, eps);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void whet_rms_dw_partial_##SUFFIX(const T *x, const T *g, const float *s,          \
                                                            float *partial, int n, int rows, int chunk) {    \
        rms_dw_partial(x, g, s, partial, n, rows, chunk);                                                    \
    }                                                                                                        \
    extern "C" __global__ void whet_rms_dw_sum_##SUFFIX(const float *partial, T *dw, int n, int chunks) {   \
        rms_dw_sum(partial, dw, n, chunks);                                                                  \
    }                                                                                                        \
    extern "C" __global__ void whet_swiglu_fwd_##SUFFIX(const T *g, const T *u, T *y, size_t count) {        \
        swiglu_fwd(g, u, y, count);                                                                          \
    }                                                                                                        \
    extern "C" __global__ void whet_swiglu_dg_##SUFFIX(const T *g, const T *u, const T *d, T *out,           \
                                                       size_t count) {                                       \
        swiglu_dg(g, u, d, out, count);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void whet_swiglu_du_##SUFFIX(const T *g, const T *d, T *out, size_t count) {       \
        swiglu_du(g, d, out, count);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void whet_rope_##SUFFIX(const T *x, const T *cos, const T *sin, T *y, int t,       \
                                                  int half, int interleaved, int inverse, size_t pairs) {    \
        rope(x, cos, sin, y, t, half, interleaved, inverse, pairs);                                          \
    }

ENTRIES(float, f32)
ENTRIES(bf16, bf16)
