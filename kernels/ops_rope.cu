// Rotary position embedding in place ("rotate half"). Each thread computes the angles of its
// frequencies once (fp32, as the contract says) and applies them to the token's every head.
// Two layouts of the threads:
// - rope_rows_kernel, for rows of 16-byte packs that a power-of-two group of lanes covers (head
//   dims 64 and 128 among them): a group of D / K lanes owns one token's head row, so a warp
//   access covers whole 128-byte lines of rows aligned to them (the decoder's fused QKV rows are);
//   the rotation partner comes from another lane by a shuffle.
//   On the H200 it moved 75-89% of copy bandwidth at the 0.5B-7B shapes, where rope_kernel moved
//   69-81% (docs/benchmarks.md).
// - rope_kernel, for any other shape: a thread owns K adjacent frequencies and reads
//   x[..., i .. i+K) and x[..., i+D/2 .. i+D/2+K) itself (8-byte packs or single elements).
#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"

namespace lrsa::cuda {
namespace {

constexpr int kHeadGroup = 4;

// x [T, H, D] with token stride token_stride (elements; the last two dimensions contiguous).
// sin_sign = -1 rotates by -angle (the backward).
template <int K, typename T>
__global__ void rope_kernel(T* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int heads,
                            int head_dim, int64_t token_stride, float sin_sign) {
  const int half = head_dim / 2, packs = half / K;
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < tokens * packs;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = item / packs;
    const int i0 = int(item % packs) * K;
    const float pos = float(positions[t]);
    float freq[K], cosv[K], sinv[K];
    load_floats<K>(inv_freq + i0, freq);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      sincosf(pos * freq[j], &sinv[j], &cosv[j]);
      sinv[j] *= sin_sign;
    }
    T* row = x + t * token_stride + i0;
    // Heads in groups of kHeadGroup: the group's loads are all issued before its first store, so
    // a thread keeps 2 * kHeadGroup accesses in flight.
    for (int h0 = 0; h0 < heads; h0 += kHeadGroup) {
      float a[kHeadGroup][K], b[kHeadGroup][K];
#pragma unroll
      for (int u = 0; u < kHeadGroup; ++u) {
        if (h0 + u < heads) {
          load_floats<K>(row + int64_t(h0 + u) * head_dim, a[u]);
          load_floats<K>(row + int64_t(h0 + u) * head_dim + half, b[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kHeadGroup; ++u) {
        if (h0 + u < heads) {
          float out_a[K], out_b[K];
#pragma unroll
          for (int j = 0; j < K; ++j) {
            out_a[j] = a[u][j] * cosv[j] - b[u][j] * sinv[j];
            out_b[j] = b[u][j] * cosv[j] + a[u][j] * sinv[j];
          }
          store_floats<K>(row + int64_t(h0 + u) * head_dim, out_a);
          store_floats<K>(row + int64_t(h0 + u) * head_dim + half, out_b);
        }
      }
    }
  }
}

// x [T, H, D] as above, K-element packs of 16 bytes: the row_threads = D / K lanes of a group own
// one token's head row (lane j: columns [jK, jK + K)). A pack's rotation partner (column i +- D/2)
// is in lane j ^ (row_threads / 2), and arrives by a shuffle of its raw words. kRowHeads heads'
// loads are in flight at a time (8 was faster than 4 and 16 on the H200).
constexpr int kRowHeads = 8;

template <int K, typename T>
__global__ void rope_rows_kernel(T* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int heads,
                                 int head_dim, int64_t token_stride, float sin_sign) {
  constexpr int kWords = words_of<K, T>;
  const int row_threads = head_dim / K, half_threads = row_threads / 2;
  const int64_t total = tokens * row_threads;
  // Every lane of a warp runs the same iterations: the shuffles need the whole warp.
  for (int64_t base = blockIdx.x * int64_t(blockDim.x); base < total; base += int64_t(gridDim.x) * blockDim.x) {
    const int64_t item = base + threadIdx.x;
    const bool active = item < total;
    const int64_t t = active ? item / row_threads : 0;
    const int j = int(item % row_threads);
    const bool first_half = j < half_threads;
    const float pos = float(positions[t]);
    float freq[K], cosv[K], sinv[K];
    load_floats<K>(inv_freq + (first_half ? j : j - half_threads) * K, freq);
    const float sign = first_half ? -sin_sign : sin_sign;  // a' = a cos - b sin, b' = b cos + a sin
#pragma unroll
    for (int e = 0; e < K; ++e) {
      sincosf(pos * freq[e], &sinv[e], &cosv[e]);
      sinv[e] *= sign;
    }
    T* row = x + t * token_stride + j * K;
    for (int h0 = 0; h0 < heads; h0 += kRowHeads) {
      uint32_t w[kRowHeads][kWords] = {};
#pragma unroll
      for (int u = 0; u < kRowHeads; ++u) {
        if (active && h0 + u < heads) load_words<K>(row + int64_t(h0 + u) * head_dim, w[u]);
      }
#pragma unroll
      for (int u = 0; u < kRowHeads; ++u) {
        uint32_t pw[kWords];
#pragma unroll
        for (int k = 0; k < kWords; ++k) pw[k] = __shfl_xor_sync(0xffffffffu, w[u][k], half_threads);
        if (active && h0 + u < heads) {
          float own[K], partner[K], out[K];
          unpack_floats<K, T>(w[u], own);
          unpack_floats<K, T>(pw, partner);
#pragma unroll
          for (int e = 0; e < K; ++e) out[e] = own[e] * cosv[e] + partner[e] * sinv[e];
          store_floats<K>(row + int64_t(h0 + u) * head_dim, out);
        }
      }
    }
  }
}

}  // namespace

void rope_apply(Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool inverse) {
  const char* op = inverse ? "rope_backward" : "rope_forward";
  check_tensor(x, op, "x", {DType::F32, DType::BF16}, false);
  check_tensor(positions, op, "positions", {DType::I32});
  check_tensor(inv_freq, op, "inv_freq", {DType::F32});
  use_device(x);
  LRSA_CHECK(x.dim() == 3, "{}: x must be [T, H, D], got {}", op, x.describe());
  const int64_t tokens = x.size(0), heads = x.size(1), head_dim = x.size(2);
  LRSA_CHECK(x.stride(2) == 1 && (heads == 1 || x.stride(1) == head_dim) && (tokens == 1 || x.stride(0) >= heads * head_dim),
             "{}: the last two dimensions of x must be contiguous, got {} with strides {}", op, x.describe(),
             shape_str(x.strides()));
  LRSA_CHECK(head_dim % 2 == 0 && inv_freq.numel() == head_dim / 2 && positions.numel() == tokens,
             "{}: shapes do not agree: x {}, positions {}, inv_freq {}", op, x.describe(), positions.describe(),
             inv_freq.describe());
  const int64_t half = head_dim / 2, token_stride = x.stride(0);
  if (tokens == 0 || heads == 0 || half == 0) return;
  // Packs need every row start and both halves aligned: half % K == 0 and aligned strides (checked
  // for 16-byte packs, which covers the 8-byte ones).
  const bool vector = half % kPack == 0 && (token_stride * int64_t(x.element_size())) % 16 == 0 &&
                      aligned16(x.data()) && aligned16(inv_freq.data());
  const float sin_sign = inverse ? -1.0f : 1.0f;
  dispatch_float(x.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int kHalfPack = 8 / int(sizeof(T));
    constexpr int kFullPack = 16 / int(sizeof(T));
    const int64_t row_threads = head_dim / kFullPack;
    if (vector && row_threads <= 32 && 32 % row_threads == 0) {
      rope_rows_kernel<kFullPack><<<grid_size(tokens * row_threads, 256), 256, 0, current_stream()>>>(
          static_cast<T*>(x.data()), positions.data_as<int32_t>(), inv_freq.data_as<float>(), tokens, int(heads),
          int(head_dim), token_stride, sin_sign);
      return;
    }
    dispatch_int<kHalfPack, 1>(vector ? kHalfPack : 1, "vector width", [&](auto k) {
      const int64_t items = tokens * (half / k());
      rope_kernel<k()><<<grid_size(items, 256), 256, 0, current_stream()>>>(
          static_cast<T*>(x.data()), positions.data_as<int32_t>(), inv_freq.data_as<float>(), tokens, int(heads),
          int(head_dim), token_stride, sin_sign);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace lrsa::cuda
