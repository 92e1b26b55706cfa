// Multi-scale deformable attention, forward and backward (meddino-decoder's `msda` op).
//
// Layouts (C order): value [N, S, M, D]; locations [N, Lq, M, L, P, 2] as (x, y) in [0, 1];
// weights [N, Lq, M, L, P]; output [N, Lq, M*D]. `meta` holds the level geometry as int32:
// H_0, W_0, ..., H_{L-1}, W_{L-1}, then the L first value rows.
//
// Sampling follows grid_sample(align_corners=False) with zero padding: x = loc_x*W - 0.5,
// y = loc_y*H - 0.5; a sample contributes when -1 < x < W and -1 < y < H, each corner outside
// the map contributing zero.
//
// Accumulation is in float for float and bfloat16 storage, in double for double.
//
// Backward: one thread per sample (n, q, m, l, p) loops over the D channels of its head. The
// location and weight gradients are sums over those channels, so each thread reduces them in
// registers and writes its own slots without atomics; only the value gradient, where samples
// of many queries land on the same rows, uses atomicAdd (float or double, sm_60+). With the
// head widths of the ViT-Adapter (24-32 channels) a thread's loop is short and the atomics
// are spread over S*M*D addresses, so contention stays low.

#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Bilinear corners of one sample: flat value rows (or -1 outside) and their weights.
template <typename A> struct Corners {
    int64_t row[4];
    A weight[4];
    A lx, ly;
};

template <typename A>
__device__ __forceinline__ bool corners_of(A loc_x, A loc_y, int h, int w, int start, Corners<A>& out) {
    const A x = loc_x * (A)w - (A)0.5;
    const A y = loc_y * (A)h - (A)0.5;
    if (!(y > (A)-1 && x > (A)-1 && y < (A)h && x < (A)w)) return false;
    const A x0f = floor(x), y0f = floor(y);
    const int x0 = (int)x0f, y0 = (int)y0f;
    const A lx = x - x0f, ly = y - y0f, hx = (A)1 - lx, hy = (A)1 - ly;
    const int ys[4] = {y0, y0, y0 + 1, y0 + 1};
    const int xs[4] = {x0, x0 + 1, x0, x0 + 1};
    const A ws[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
    for (int k = 0; k < 4; ++k) {
        const bool inside = ys[k] >= 0 && xs[k] >= 0 && ys[k] < h && xs[k] < w;
        out.row[k] = inside ? (int64_t)start + (int64_t)ys[k] * w + xs[k] : -1;
        out.weight[k] = ws[k];
    }
    out.lx = lx;
    out.ly = ly;
    return true;
}

template <typename T>
__device__ void forward_impl(const T* value, const T* loc, const T* attn, const int* meta, T* out,
                             int n_batch, int n_spatial, int n_heads, int n_channels, int n_levels,
                             int n_queries, int n_points) {
    typedef typename Acc<T>::type A;
    const int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t total = (int64_t)n_batch * n_queries * n_heads * n_channels;
    if (index >= total) return;
    const int c = index % n_channels;
    int64_t t = index / n_channels;
    const int m = t % n_heads;
    t /= n_heads;
    const int64_t nq = t;
    const int n = (int)(t / n_queries);
    A acc = 0;
    for (int l = 0; l < n_levels; ++l) {
        const int h = meta[2 * l], w = meta[2 * l + 1], start = meta[2 * n_levels + l];
        for (int p = 0; p < n_points; ++p) {
            const int64_t s = ((nq * n_heads + m) * n_levels + l) * n_points + p;
            Corners<A> k;
            if (!corners_of<A>(to_acc(loc[2 * s]), to_acc(loc[2 * s + 1]), h, w, start, k)) continue;
            A sampled = 0;
            for (int j = 0; j < 4; ++j) {
                if (k.row[j] >= 0) {
                    sampled += k.weight[j] * to_acc(value[(((int64_t)n * n_spatial + k.row[j]) * n_heads + m) * n_channels + c]);
                }
            }
            acc += to_acc(attn[s]) * sampled;
        }
    }
    out[index] = from_acc<T>(acc);
}

// grads: one buffer of the accumulation type holding the value gradient [N, S, M, D] at 0,
// the location gradient at `loc_offset` and the weight gradient at `attn_offset`, zeroed.
template <typename T>
__device__ void backward_impl(const T* value, const T* loc, const T* attn, const T* grad_out, const int* meta,
                              typename Acc<T>::type* grads, int64_t loc_offset, int64_t attn_offset,
                              int n_batch, int n_spatial, int n_heads, int n_channels, int n_levels,
                              int n_queries, int n_points) {
    typedef typename Acc<T>::type A;
    const int64_t s = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t total = (int64_t)n_batch * n_queries * n_heads * n_levels * n_points;
    if (s >= total) return;
    int64_t t = s / n_points;
    const int l = t % n_levels;
    t /= n_levels;
    const int m = t % n_heads;
    const int64_t nq = t / n_heads;
    const int n = (int)(nq / n_queries);
    const int h = meta[2 * l], w = meta[2 * l + 1], start = meta[2 * n_levels + l];
    Corners<A> k;
    if (!corners_of<A>(to_acc(loc[2 * s]), to_acc(loc[2 * s + 1]), h, w, start, k)) return;
    const A a = to_acc(attn[s]);
    const A lx = k.lx, ly = k.ly, hx = (A)1 - lx, hy = (A)1 - ly;
    A* grad_value = grads;
    A grad_a = 0, grad_x = 0, grad_y = 0;
    for (int c = 0; c < n_channels; ++c) {
        const A g = to_acc(grad_out[(nq * n_heads + m) * n_channels + c]);
        A v[4];
        for (int j = 0; j < 4; ++j) {
            if (k.row[j] >= 0) {
                const int64_t at = (((int64_t)n * n_spatial + k.row[j]) * n_heads + m) * n_channels + c;
                v[j] = to_acc(value[at]);
                atomicAdd(&grad_value[at], k.weight[j] * a * g);
            } else {
                v[j] = 0;
            }
        }
        grad_a += g * (k.weight[0] * v[0] + k.weight[1] * v[1] + k.weight[2] * v[2] + k.weight[3] * v[3]);
        grad_x += g * (hy * (v[1] - v[0]) + ly * (v[3] - v[2]));
        grad_y += g * (hx * (v[2] - v[0]) + lx * (v[3] - v[1]));
    }
    grads[attn_offset + s] = grad_a;
    grads[loc_offset + 2 * s] = (A)w * a * grad_x;
    grads[loc_offset + 2 * s + 1] = (A)h * a * grad_y;
}

#define MSDA_KERNELS(SUFFIX, T)                                                                            \
    extern "C" __global__ void ms_deform_attn_forward_##SUFFIX(                                             \
        const T* value, const T* loc, const T* attn, const int* meta, T* out, int n_batch, int n_spatial,  \
        int n_heads, int n_channels, int n_levels, int n_queries, int n_points) {                         \
        forward_impl<T>(value, loc, attn, meta, out, n_batch, n_spatial, n_heads, n_channels, n_levels,   \
                        n_queries, n_points);                                                              \
    }                                                                                                      \
    extern "C" __global__ void ms_deform_attn_backward_##SUFFIX(                                            \
        const T* value, const T* loc, const T* attn, const T* grad_out, const int* meta,                    \
        Acc<T>::type* grads, int64_t loc_offset, int64_t attn_offset, int n_batch, int n_spatial,          \
        int n_heads, int n_channels, int n_levels, int n_queries, int n_points) {                         \
        backward_impl<T>(value, loc, attn, grad_out, meta, grads, loc_offset, attn_offset, n_batch,        \
                         n_spatial, n_heads, n_channels, n_levels, n_queries, n_points);                   \
    }

MSDA_KERNELS(f32, float)
MSDA_KERNELS(f64, double)
MSDA_KERNELS(bf16, __nv_bfloat16)
