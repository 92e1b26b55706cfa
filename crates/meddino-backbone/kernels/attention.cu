// Memory-efficient softmax attention, forward and backward (the FlashAttention-2
// recurrences), for the backbone's `flash_attention` op.
//
// q, k, v: [BH, N, D] contiguous, f32 or bf16; every sum and exponential in f32. Scores are
// kept in the log2 domain: s2 = (q·k)·scale·log2(e), p = exp2(s2 − lse2), so that one exp2
// does what exp would. The N×N matrices never reach global memory: each thread owns one row
// (a query in the forward and in dq, a key in dk and dv) in registers, and the other operand
// streams through shared memory in tiles of TILE rows.
//
// The forward writes one f32 buffer [o (BH·N·D) | lse2 (BH·N)]; the backward reads it, the
// upstream gradient dO (f32, [BH, N, D]) and delta = rowsum(dO ∘ O) (attention_delta), and
// writes f32 dq, dk, dv.
#include <cuda_bf16.h>
#include <math_constants.h>
#include <mma.h>

namespace {

constexpr int ROWS = 64;  // threads per block: rows owned
constexpr int TILE = 32;  // rows of the streamed operand per shared-memory tile

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Rows [first, first + TILE) of an [n, D] matrix into shared memory as f32, times `factor`;
// rows past n become 0.
template <typename T, int D>
__device__ __forceinline__ void load_tile(float (*tile)[D], const T* __restrict__ src, int first, int n,
                                          float factor) {
  for (int index = threadIdx.x; index < TILE * D; index += blockDim.x) {
    const int r = index / D, c = index % D, row = first + r;
    tile[r][c] = row < n ? to_float(src[static_cast<long long>(row) * D + c]) * factor : 0.0f;
  }
}

// One of the block's rows into registers as f32, times `factor` (0 for a row past n).
template <typename T, int D>
__device__ __forceinline__ void load_row(float (&dst)[D], const T* __restrict__ src, int row, int n, float factor) {
#pragma unroll
  for (int d = 0; d < D; ++d) dst[d] = row < n ? to_float(src[static_cast<long long>(row) * D + d]) * factor : 0.0f;
}

template <int D>
__device__ __forceinline__ float dot(const float (&a)[D], const float* b) {
  float sum = 0.0f;
#pragma unroll
  for (int d = 0; d < D; ++d) sum = fmaf(a[d], b[d], sum);
  return sum;
}

template <typename T, int D>
__device__ void forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        float* __restrict__ out, int bh_count, int n, float scale_log2) {
  __shared__ float ks[TILE][D];
  __shared__ float vs[TILE][D];
  const long long base = static_cast<long long>(blockIdx.y) * n * D;
  const int row = blockIdx.x * ROWS + threadIdx.x;
  q += base;
  k += base;
  v += base;
  float qr[D], acc[D];
  load_row<T, D>(qr, q, row, n, scale_log2);
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.0f;
  float running_max = -CUDART_INF_F, running_sum = 0.0f;
  for (int first = 0; first < n; first += TILE) {
    load_tile<T, D>(ks, k, first, n, 1.0f);
    load_tile<T, D>(vs, v, first, n, 1.0f);
    __syncthreads();
    const int count = min(TILE, n - first);
    float s[TILE];
    float tile_max = -CUDART_INF_F;
#pragma unroll
    for (int j = 0; j < TILE; ++j) {
      s[j] = j < count ? dot<D>(qr, ks[j]) : -CUDART_INF_F;
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float new_max = fmaxf(running_max, tile_max);
    const float correction = exp2f(running_max - new_max);  // 0 on the first tile
    running_sum *= correction;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] *= correction;
#pragma unroll
    for (int j = 0; j < TILE; ++j) {
      const float p = exp2f(s[j] - new_max);  // 0 past n
      running_sum += p;
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] = fmaf(p, vs[j][d], acc[d]);
    }
    running_max = new_max;
    __syncthreads();
  }
  if (row < n) {
    const float inverse = 1.0f / running_sum;
    float* o = out + base + static_cast<long long>(row) * D;
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] = acc[d] * inverse;
    out[static_cast<long long>(bh_count) * n * D + static_cast<long long>(blockIdx.y) * n + row] =
        running_max + log2f(running_sum);
  }
}

// delta[i] = Σ_d dO[i, d] · O[i, d] over all BH·N rows; one thread per row.
template <int D>
__device__ void delta(const float* __restrict__ grad, const float* __restrict__ out, float* __restrict__ result,
                      long long rows) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  float sum = 0.0f;
#pragma unroll
  for (int d = 0; d < D; ++d) sum = fmaf(grad[row * D + d], out[row * D + d], sum);
  result[row] = sum;
}

// dq[i] = scale · Σ_j p_ij (dp_ij − delta_i) k_j, with dp_ij = dO_i · v_j; one thread per query.
template <typename T, int D>
__device__ void grad_q(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       const float* __restrict__ lse2, const float* __restrict__ grad,
                       const float* __restrict__ deltas, float* __restrict__ dq, int n, float scale_log2,
                       float scale) {
  __shared__ float ks[TILE][D];
  __shared__ float vs[TILE][D];
  const long long base = static_cast<long long>(blockIdx.y) * n * D;
  const int row = blockIdx.x * ROWS + threadIdx.x;
  const bool live = row < n;
  const long long flat_row = static_cast<long long>(blockIdx.y) * n + row;
  float qr[D], dor[D], acc[D];
  load_row<T, D>(qr, q + base, row, n, scale_log2);
  load_row<float, D>(dor, grad + base, row, n, 1.0f);
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.0f;
  const float lse = live ? lse2[flat_row] : 0.0f;
  const float delta_i = live ? deltas[flat_row] : 0.0f;
  for (int first = 0; first < n; first += TILE) {
    load_tile<T, D>(ks, k + base, first, n, 1.0f);
    load_tile<T, D>(vs, v + base, first, n, 1.0f);
    __syncthreads();
    const int count = min(TILE, n - first);
#pragma unroll 4
    for (int j = 0; j < TILE; ++j) {
      if (j < count) {
        const float p = exp2f(dot<D>(qr, ks[j]) - lse);
        const float ds = p * (dot<D>(dor, vs[j]) - delta_i);
#pragma unroll
        for (int d = 0; d < D; ++d) acc[d] = fmaf(ds, ks[j][d], acc[d]);
      }
    }
    __syncthreads();
  }
  if (live) {
#pragma unroll
    for (int d = 0; d < D; ++d) dq[base + static_cast<long long>(row) * D + d] = acc[d] * scale;
  }
}

// One thread per key j: dv[j] = Σ_i p_ij dO_i, and (with WANT_DK) dk[j] = scale · Σ_i ds_ij q_i.
// Two launches (dv, then dk) keep each thread's registers at 2–3 rows of D.
template <typename T, int D, bool WANT_DK>
__device__ void grad_kv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const float* __restrict__ lse2, const float* __restrict__ grad,
                        const float* __restrict__ deltas, float* __restrict__ result, int n, float scale_log2,
                        float scale) {
  __shared__ float qs[TILE][D];
  __shared__ float dos[TILE][D];
  __shared__ float lses[TILE];
  __shared__ float delta_s[TILE];
  const long long base = static_cast<long long>(blockIdx.y) * n * D;
  const long long flat_base = static_cast<long long>(blockIdx.y) * n;
  const int row = blockIdx.x * ROWS + threadIdx.x;
  float kr[D], vr[D], acc[D];
  load_row<T, D>(kr, k + base, row, n, 1.0f);
  if (WANT_DK) load_row<T, D>(vr, v + base, row, n, 1.0f);
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.0f;
  for (int first = 0; first < n; first += TILE) {
    // Queries pre-scaled, so that qs·k is already s2.
    load_tile<T, D>(qs, q + base, first, n, scale_log2);
    load_tile<float, D>(dos, grad + base, first, n, 1.0f);
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
      const bool in = first + r < n;
      lses[r] = in ? lse2[flat_base + first + r] : 0.0f;
      delta_s[r] = in ? deltas[flat_base + first + r] : 0.0f;
    }
    __syncthreads();
    const int count = min(TILE, n - first);
#pragma unroll 4
    for (int i = 0; i < TILE; ++i) {
      if (i < count) {
        const float p = exp2f(dot<D>(kr, qs[i]) - lses[i]);
        if (WANT_DK) {
          const float ds = p * (dot<D>(vr, dos[i]) - delta_s[i]);
#pragma unroll
          for (int d = 0; d < D; ++d) acc[d] = fmaf(ds, qs[i][d], acc[d]);
        } else {
#pragma unroll
          for (int d = 0; d < D; ++d) acc[d] = fmaf(p, dos[i][d], acc[d]);
        }
      }
    }
    __syncthreads();
  }
  if (row < n) {
    // qs held q·scale·log2(e): dk = scale · Σ ds q = Σ ds (q·scale·log2 e) · scale / scale_log2.
    const float factor = WANT_DK ? scale / scale_log2 : 1.0f;
#pragma unroll
    for (int d = 0; d < D; ++d) result[base + static_cast<long long>(row) * D + d] = acc[d] * factor;
  }
}

// The forward on tensor cores, for bf16 q, k, v: the products q·kᵀ and p·v as 16×16×16
// bf16 matrix products with f32 accumulation (WMMA), the softmax in f32 between them. Each
// warp owns 16 query rows of the block's 64; the scores and the output accumulator go
// through the warp's shared-memory scratch, where two lanes per row rescale them (WMMA
// fragments have no row layout to rescale in place). Same results as `forward`: products of
// bf16 values are exact in f32, only the order of the f32 sums differs.
constexpr int TC_WARPS = 4;
constexpr int TC_ROWS = 16 * TC_WARPS;
constexpr int TC_KEYS = 32;  // keys per shared-memory tile

template <int D>
__device__ void forward_tensor_cores(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                     const __nv_bfloat16* __restrict__ v, float* __restrict__ out, int bh_count,
                                     int n, float scale_log2) {
  using namespace nvcuda;
  static_assert(D % 16 == 0, "head dimension must be a multiple of 16");
  __shared__ __align__(32) __nv_bfloat16 qs[TC_ROWS][D];
  __shared__ __align__(32) __nv_bfloat16 ks[TC_KEYS][D];
  __shared__ __align__(32) __nv_bfloat16 vs[TC_KEYS][D];
  __shared__ __align__(32) float scores[TC_WARPS][16][TC_KEYS];
  __shared__ __align__(32) __nv_bfloat16 probabilities[TC_WARPS][16][TC_KEYS];
  __shared__ __align__(32) float accumulator[TC_WARPS][16][D];

  const long long base = static_cast<long long>(blockIdx.y) * n * D;
  const int first_row = blockIdx.x * TC_ROWS;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const __nv_bfloat16 zero = __float2bfloat16(0.0f);
  for (int index = threadIdx.x; index < TC_ROWS * D; index += blockDim.x) {
    const int r = index / D, c = index % D, row = first_row + r;
    qs[r][c] = row < n ? q[base + static_cast<long long>(row) * D + c] : zero;
  }
  for (int index = lane; index < 16 * D; index += 32) accumulator[warp][index / D][index % D] = 0.0f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> q_frag[D / 16];
#pragma unroll
  for (int c = 0; c < D / 16; ++c) wmma::load_matrix_sync(q_frag[c], &qs[warp * 16][c * 16], D);

  // Lane pairs own rows: row r = lane / 2, its half (lane % 2) of the tile's keys and of D.
  const int r = lane / 2, half = lane % 2;
  float running_max = -CUDART_INF_F, running_sum = 0.0f;
  for (int first_key = 0; first_key < n; first_key += TC_KEYS) {
    __syncthreads();  // every warp is done with the previous tile
    for (int index = threadIdx.x; index < TC_KEYS * D; index += blockDim.x) {
      const int j = index / D, c = index % D, key = first_key + j;
      const bool in = key < n;
      ks[j][c] = in ? k[base + static_cast<long long>(key) * D + c] : zero;
      vs[j][c] = in ? v[base + static_cast<long long>(key) * D + c] : zero;
    }
    __syncthreads();
    // scores = q · kᵀ (kᵀ read column-major from the row-major key tile).
#pragma unroll
    for (int j = 0; j < TC_KEYS / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.0f);
#pragma unroll
      for (int c = 0; c < D / 16; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> k_frag;
        wmma::load_matrix_sync(k_frag, &ks[j * 16][c * 16], D);
        wmma::mma_sync(s_frag, q_frag[c], k_frag, s_frag);
      }
      wmma::store_matrix_sync(&scores[warp][0][j * 16], s_frag, TC_KEYS, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax over this tile, row by row.
    constexpr int PER_LANE = TC_KEYS / 2;
    float s[PER_LANE];
    float tile_max = -CUDART_INF_F;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const int column = half * PER_LANE + j;
      s[j] = first_key + column < n ? scores[warp][r][column] * scale_log2 : -CUDART_INF_F;
      tile_max = fmaxf(tile_max, s[j]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float new_max = fmaxf(running_max, tile_max);
    const float correction = exp2f(running_max - new_max);
    float tile_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const float p = exp2f(s[j] - new_max);
      tile_sum += p;
      probabilities[warp][r][half * PER_LANE + j] = __float2bfloat16(p);
    }
    tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
    running_sum = running_sum * correction + tile_sum;
    running_max = new_max;
#pragma unroll
    for (int c = 0; c < D / 2; ++c) accumulator[warp][r][half * (D / 2) + c] *= correction;
    __syncwarp();
    // accumulator += p · v
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, &accumulator[warp][0][c * 16], D, wmma::mem_row_major);
#pragma unroll
      for (int j = 0; j < TC_KEYS / 16; ++j) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, &probabilities[warp][0][j * 16], TC_KEYS);
        wmma::load_matrix_sync(v_frag, &vs[j * 16][c * 16], D);
        wmma::mma_sync(o_frag, p_frag, v_frag, o_frag);
      }
      wmma::store_matrix_sync(&accumulator[warp][0][c * 16], o_frag, D, wmma::mem_row_major);
    }
    __syncwarp();
  }
  const int row = first_row + warp * 16 + r;
  if (row < n) {
    const float inverse = 1.0f / running_sum;
    float* o = out + base + static_cast<long long>(row) * D;
#pragma unroll
    for (int c = 0; c < D / 2; ++c) o[half * (D / 2) + c] = accumulator[warp][r][half * (D / 2) + c] * inverse;
    if (half == 0) {
      out[static_cast<long long>(bh_count) * n * D + static_cast<long long>(blockIdx.y) * n + row] =
          running_max + log2f(running_sum);
    }
  }
}

}  // namespace

#define ATTENTION_KERNELS(T, NAME, D)                                                                           \
  extern "C" __global__ void __launch_bounds__(ROWS)                                                           \
      attention_forward_##NAME##_d##D(const T* q, const T* k, const T* v, float* out, int bh_count, int n,      \
                                      float scale_log2) {                                                      \
    forward<T, D>(q, k, v, out, bh_count, n, scale_log2);                                                      \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(ROWS)                                                           \
      attention_grad_q_##NAME##_d##D(const T* q, const T* k, const T* v, const float* lse2, const float* grad,  \
                                     const float* deltas, float* dq, int n, float scale_log2, float scale) {    \
    grad_q<T, D>(q, k, v, lse2, grad, deltas, dq, n, scale_log2, scale);                                       \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(ROWS)                                                           \
      attention_grad_k_##NAME##_d##D(const T* q, const T* k, const T* v, const float* lse2, const float* grad,  \
                                     const float* deltas, float* dk, int n, float scale_log2, float scale) {    \
    grad_kv<T, D, true>(q, k, v, lse2, grad, deltas, dk, n, scale_log2, scale);                                \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(ROWS)                                                           \
      attention_grad_v_##NAME##_d##D(const T* q, const T* k, const T* v, const float* lse2, const float* grad,  \
                                     const float* deltas, float* dv, int n, float scale_log2, float scale) {    \
    grad_kv<T, D, false>(q, k, v, lse2, grad, deltas, dv, n, scale_log2, scale);                               \
  }

#define ATTENTION_DELTA(D)                                                                                      \
  extern "C" __global__ void attention_delta_d##D(const float* grad, const float* out, float* result,          \
                                                  long long rows) {                                            \
    delta<D>(grad, out, result, rows);                                                                         \
  }

ATTENTION_KERNELS(float, f32, 32)
ATTENTION_KERNELS(float, f32, 64)
ATTENTION_KERNELS(float, f32, 128)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 32)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 64)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 128)
#define ATTENTION_TENSOR_CORES(D)                                                                               \
  extern "C" __global__ void __launch_bounds__(32 * TC_WARPS) attention_forward_tc_bf16_d##D(                   \
      const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, float* out, int bh_count, int n,  \
      float scale_log2) {                                                                                       \
    forward_tensor_cores<D>(q, k, v, out, bh_count, n, scale_log2);                                             \
  }

ATTENTION_TENSOR_CORES(32)
ATTENTION_TENSOR_CORES(64)
ATTENTION_DELTA(32)
ATTENTION_DELTA(64)
ATTENTION_DELTA(128)
