// Decode attention over the inference KV cache (include/lrsa/infer/cuda_infer.h), split-K
// ("flash decoding"): query n of sequence seq[n] sees cache rows [0, limit[n]); those rows are
// cut into `splits` ranges, one CTA per (query, query head, range) computes a partial softmax
// (running max m, sum l, unnormalized output acc, base 2), and a second kernel merges the ranges.
// GQA: query head h reads KV head h / (Hq / Hk) from the shared cache, no replication.
//
// Inside a CTA (4 warps): 8 lanes share one cache row (D / 8 elements each, one or two 16-byte
// loads), so a warp walks 4 rows and the CTA 16 rows per iteration; each 8-lane group keeps its
// own (m, l, acc), merged by shuffles, then across warps through shared memory.
#include <cmath>

#include "cuda_common.cuh"
#include "lrsa/infer/cuda_infer.h"

namespace lrsa::cuda {
namespace {

constexpr int kWarps = 4, kLanesPerRow = 8, kRowsPerWarp = 32 / kLanesPerRow, kRowsPerIter = kWarps * kRowsPerWarp;
constexpr float kLog2e = 1.4426950408889634f;

// exp2(m_old - m_new) with an empty side (m_old = -inf) contributing nothing.
__device__ __forceinline__ float rescale(float m_old, float m_new) { return m_old == -INFINITY ? 0.0f : exp2f(m_old - m_new); }

template <int D, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    cache_attention_partial_kernel(const T* __restrict__ q, int64_t q_stride_n, const T* __restrict__ k,
                                   const T* __restrict__ v, int64_t cache_stride_b, const int* __restrict__ seq,
                                   const int* __restrict__ limit, int Hq, int group, int Hk, int splits, int rows_per_split,
                                   float scale_log2, float* __restrict__ part_m, float* __restrict__ part_l,
                                   float* __restrict__ part_acc) {
  constexpr int E = D / kLanesPerRow;  // elements per lane
  const int split = blockIdx.y, nh = blockIdx.x, n = nh / Hq, h = nh % Hq;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / kLanesPerRow, part = lane % kLanesPerRow;
  const int rows = limit[n];
  const int start = split * rows_per_split, end = min(rows, start + rows_per_split);
  const int64_t row_stride = int64_t(Hk) * D;
  const int64_t base = int64_t(seq[n]) * cache_stride_b + int64_t(h / group) * D + part * E;

  float qf[E], acc[E];
  load_floats<E>(q + int64_t(n) * q_stride_n + int64_t(h) * D + part * E, qf);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qf[e] *= scale_log2;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int r0 = start + warp * kRowsPerWarp; r0 < end; r0 += kRowsPerIter) {
    const int r = r0 + sub;
    const bool valid = r < end;
    float kf[E];
    if (valid) {
      load_floats<E>(k + base + int64_t(r) * row_stride, kf);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) kf[e] = 0.0f;
    }
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) s += qf[e] * kf[e];
#pragma unroll
    for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (valid) {
      float vf[E];
      load_floats<E>(v + base + int64_t(r) * row_stride, vf);
      const float m_new = fmaxf(m, s), corr = rescale(m, m_new), p = exp2f(s - m_new);
      l = l * corr + p;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = acc[e] * corr + p * vf[e];
      m = m_new;
    }
  }
  // Merge the 4 row groups of the warp (lanes with the same `part` hold the same columns).
#pragma unroll
  for (int offset = kLanesPerRow; offset < 32; offset *= 2) {
    const float m_o = __shfl_xor_sync(0xffffffffu, m, offset), l_o = __shfl_xor_sync(0xffffffffu, l, offset);
    const float m_new = fmaxf(m, m_o), a = rescale(m, m_new), b = rescale(m_o, m_new);
    l = l * a + l_o * b;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = acc[e] * a + __shfl_xor_sync(0xffffffffu, acc[e], offset) * b;
    m = m_new;
  }
  __shared__ float sm_m[kWarps], sm_l[kWarps], sm_acc[kWarps][D];
  if (lane < kLanesPerRow) {
    if (lane == 0) {
      sm_m[warp] = m;
      sm_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) sm_acc[warp][part * E + e] = acc[e];
  }
  __syncthreads();
  float m_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, sm_m[w]);
  const int64_t slot = int64_t(nh) * splits + split;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) a += sm_acc[w][d] * rescale(sm_m[w], m_all);
    part_acc[slot * D + d] = a;
  }
  if (threadIdx.x == 0) {
    float l_all = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) l_all += sm_l[w] * rescale(sm_m[w], m_all);
    part_m[slot] = m_all;
    part_l[slot] = l_all;
  }
}

// out[n, h] = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M); one CTA of D threads per (n, h).
template <int D, typename T>
__global__ void cache_attention_merge_kernel(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                             const float* __restrict__ part_acc, int splits, int Hq,
                                             int64_t out_stride_n, T* __restrict__ out) {
  const int nh = blockIdx.x, d = threadIdx.x;
  const int64_t first = int64_t(nh) * splits;
  float m_all = -INFINITY;
  for (int s = 0; s < splits; ++s) m_all = fmaxf(m_all, part_m[first + s]);
  float l_all = 0.0f, a = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float w = rescale(part_m[first + s], m_all);
    l_all += part_l[first + s] * w;
    a += part_acc[(first + s) * D + d] * w;
  }
  out[int64_t(nh / Hq) * out_stride_n + int64_t(nh % Hq) * D + d] = from_float<T>(a / l_all);
}

// cache[seq[n], limit[n] - 1, h] = rows[n, h] for k (kv = 0) and v (kv = 1): one thread per 8
// elements. A row outside the cache is skipped (the host checked the limits before the step).
template <typename T>
__global__ void cache_append_kernel(const T* __restrict__ k, const T* __restrict__ v, int64_t k_stride, int64_t v_stride,
                                    const int* __restrict__ seq, const int* __restrict__ limit, int n, int Hk, int D,
                                    int batch, int capacity, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                    int64_t cache_stride_b) {
  const int chunks = D / 8;
  const int64_t items = int64_t(2) * n * Hk * chunks;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(it % chunks), h = int(it / chunks % Hk), i = int(it / chunks / Hk % n), kv = int(it / chunks / Hk / n);
    const int b = seq[i], row = limit[i] - 1;
    if (b < 0 || b >= batch || row < 0 || row >= capacity) continue;
    const T* from = (kv == 0 ? k + int64_t(i) * k_stride : v + int64_t(i) * v_stride) + int64_t(h) * D + c * 8;
    T* to = (kv == 0 ? k_cache : v_cache) + int64_t(b) * cache_stride_b + (int64_t(row) * Hk + h) * D + c * 8;
#pragma unroll
    for (int e = 0; e < 8; ++e) to[e] = from[e];
  }
}

// dst[i, h] = src[index[h, i], h]: one thread per 8 elements.
template <typename T>
__global__ void gather_head_rows_kernel(const T* __restrict__ src, int64_t src_stride, const int* __restrict__ index,
                                        int n, int Hk, int D, T* __restrict__ dst, int64_t dst_stride) {
  const int chunks = D / 8;
  const int64_t items = int64_t(n) * Hk * chunks;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(it % chunks), h = int(it / chunks % Hk), i = int(it / chunks / Hk);
    const T* from = src + int64_t(index[int64_t(h) * n + i]) * src_stride + int64_t(h) * D + c * 8;
    T* to = dst + int64_t(i) * dst_stride + int64_t(h) * D + c * 8;
#pragma unroll
    for (int e = 0; e < 8; ++e) to[e] = from[e];
  }
}

}  // namespace

void cache_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                     const Tensor& limit, Tensor& out) {
  use_device(q);
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), Hk = k_cache.size(2), cap = k_cache.size(1);
  LRSA_CHECK(D == 64 || D == 128, "cache_attention: the CUDA kernel needs head dim 64 or 128, got {}", D);
  LRSA_CHECK(k_cache.stride(0) == v_cache.stride(0) && k_cache.stride(1) == Hk * D && v_cache.stride(1) == Hk * D,
             "cache_attention: k_cache {} and v_cache {} must be contiguous caches", k_cache.describe(), v_cache.describe());
  LRSA_CHECK(aligned16(q.data()) && aligned16(k_cache.data()) && aligned16(v_cache.data()) && q.stride(0) % 8 == 0,
             "cache_attention: q and the caches must be 16-byte aligned");
  // Enough CTAs to fill the GPU a few times over (decode: few queries, many splits; a prefill
  // chunk: many queries, one split), each at least 64 rows.
  const int64_t queries = N * Hq, target = int64_t(multiprocessor_count()) * 8;
  const int64_t max_splits = std::max<int64_t>(1, (cap + 63) / 64);
  const int splits = int(std::clamp<int64_t>((target + queries - 1) / queries, 1, std::min<int64_t>(max_splits, 128)));
  const int rows_per_split = int((cap + splits - 1) / splits);
  Tensor part_m = Tensor::empty({queries, splits}, DType::F32, q.device());
  Tensor part_l = Tensor::empty({queries, splits}, DType::F32, q.device());
  Tensor part_acc = Tensor::empty({queries, splits, D}, DType::F32, q.device());
  const float scale_log2 = kLog2e / std::sqrt(float(D));
  LRSA_CHECK(queries <= int64_t(INT32_MAX), "cache_attention: {} queries x heads exceed the grid", queries);
  dispatch_float(q.dtype(), "cache_attention", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_int<64, 128>(int(D), "head dim", [&](auto d_tag) {
      constexpr int kD = decltype(d_tag)::value;
      cache_attention_partial_kernel<kD, T><<<dim3(unsigned(queries), unsigned(splits)), kWarps * 32, 0, current_stream()>>>(
          static_cast<const T*>(q.data()), q.stride(0), static_cast<const T*>(k_cache.data()),
          static_cast<const T*>(v_cache.data()), k_cache.stride(0), seq.data_as<int32_t>(), limit.data_as<int32_t>(),
          int(Hq), int(Hq / Hk), int(Hk), splits, rows_per_split, scale_log2, part_m.data_as<float>(),
          part_l.data_as<float>(), part_acc.data_as<float>());
      LRSA_CUDA_CHECK_LAUNCH("cache_attention partial");
      cache_attention_merge_kernel<kD, T><<<unsigned(queries), kD, 0, current_stream()>>>(
          part_m.data_as<float>(), part_l.data_as<float>(), part_acc.data_as<float>(), splits, int(Hq), out.stride(0),
          static_cast<T*>(out.data()));
      LRSA_CUDA_CHECK_LAUNCH("cache_attention merge");
    });
  });
}

void cache_append(const Tensor& k, const Tensor& v, const Tensor& seq, const Tensor& limit, Tensor& k_cache,
                  Tensor& v_cache) {
  use_device(k);
  const int64_t n = k.size(0), Hk = k.size(1), D = k.size(2);
  LRSA_CHECK(D % 8 == 0, "cache_append: head dim {} must be a multiple of 8 on CUDA", D);
  LRSA_CHECK(k_cache.stride(0) == v_cache.stride(0) && k_cache.stride(1) == Hk * D && v_cache.stride(1) == Hk * D,
             "cache_append: k_cache {} and v_cache {} must be contiguous caches", k_cache.describe(), v_cache.describe());
  dispatch_float(k.dtype(), "cache_append", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cache_append_kernel<T><<<grid_size(2 * n * Hk * (D / 8), 256), 256, 0, current_stream()>>>(
        static_cast<const T*>(k.data()), static_cast<const T*>(v.data()), k.stride(0), v.stride(0),
        seq.data_as<int32_t>(), limit.data_as<int32_t>(), int(n), int(Hk), int(D), int(k_cache.size(0)),
        int(k_cache.size(1)), static_cast<T*>(k_cache.data()), static_cast<T*>(v_cache.data()), k_cache.stride(0));
    LRSA_CUDA_CHECK_LAUNCH("cache_append");
  });
}

void gather_head_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  use_device(src);
  const int64_t n = dst.size(0), Hk = dst.size(1), D = dst.size(2);
  LRSA_CHECK(D % 8 == 0, "gather_head_rows: head dim {} must be a multiple of 8 on CUDA", D);
  dispatch_float(src.dtype(), "gather_head_rows", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gather_head_rows_kernel<T><<<grid_size(n * Hk * (D / 8), 256), 256, 0, current_stream()>>>(
        static_cast<const T*>(src.data()), src.stride(0), index.data_as<int32_t>(), int(n), int(Hk), int(D),
        static_cast<T*>(dst.data()), dst.stride(0));
    LRSA_CUDA_CHECK_LAUNCH("gather_head_rows");
  });
}

}  // namespace lrsa::cuda
