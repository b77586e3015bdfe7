// Fused softmax cross-entropy: one block per row (grid-stride over rows). Pass 1 walks the
// vocabulary in 16-byte packs keeping, per thread, an online max m and sum s of exp(l - m)
// (rescaled when the max grows); the (m, s) pairs are merged by a fixed block tree, so the loss
// is the same bits on every run. Pass 2 writes dlogits = grad_scale * (softmax - onehot), in
// place when dlogits aliases logits (each element is read before the same thread writes it; the
// target logit is read in pass 1, before the block-wide barrier that precedes every write).
#include <cmath>

#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"
#include "ops_common.cuh"

namespace lrsa::cuda {
namespace {

constexpr int kCeThreads = 512;

// (m, s) <- merge of (m, s) and (mo, so): the sum of exp(l - max) over both sets.
__device__ __forceinline__ void merge_max_sum(float& m, float& s, float mo, float so) {
  const float mn = fmaxf(m, mo);
  if (mn == -INFINITY) return;  // both sets empty
  s = s * expf(m - mn) + so * expf(mo - mn);
  m = mn;
}

// Block-wide merge; every thread gets the result.
__device__ __forceinline__ void block_max_sum(float& m, float& s) {
  __shared__ float ms[32], ss[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    merge_max_sum(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32), warps = int(blockDim.x / 32);
  __syncthreads();  // the previous row's readers are done with ms/ss
  if (lane == 0) {
    ms[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? ms[lane] : -INFINITY;
  s = lane < warps ? ss[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    merge_max_sum(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
}

// logits, dlogits [rows, vocab]; dlogits null for the forward only.
template <int K, typename TL, typename TD>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_kernel(const TL* logits, const int32_t* labels, float grad_scale, float* nll, TD* dlogits,
                         int64_t rows, int64_t vocab) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const TL* row = logits + r * vocab;
    TD* drow = dlogits == nullptr ? nullptr : dlogits + r * vocab;
    const int32_t label = labels[r];
    if (label == ops::kIgnoreIndex) {
      if (threadIdx.x == 0) nll[r] = 0.0f;
      if (drow != nullptr) {
        const float zeros[K] = {};
        for (int64_t c = int64_t(threadIdx.x) * K; c < vocab; c += int64_t(blockDim.x) * K) store_floats<K>(drow + c, zeros);
      }
      continue;
    }
    const float target = to_float(row[label]);  // read before any thread of the block writes the row
    float m = -INFINITY, s = 0.0f;
    for (int64_t c = int64_t(threadIdx.x) * K; c < vocab; c += int64_t(blockDim.x) * K) {
      float v[K];
      load_floats<K>(row + c, v);
      float pack_max = v[0];
#pragma unroll
      for (int j = 1; j < K; ++j) pack_max = fmaxf(pack_max, v[j]);
      float pack_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < K; ++j) pack_sum += expf(v[j] - pack_max);
      merge_max_sum(m, s, pack_max, pack_sum);
    }
    block_max_sum(m, s);
    const float lse = m + logf(s);
    if (threadIdx.x == 0) nll[r] = lse - target;
    if (drow == nullptr) continue;
    for (int64_t c = int64_t(threadIdx.x) * K; c < vocab; c += int64_t(blockDim.x) * K) {
      float v[K];
      load_floats<K>(row + c, v);
#pragma unroll
      for (int j = 0; j < K; ++j) v[j] = grad_scale * (expf(v[j] - lse) - (c + j == label ? 1.0f : 0.0f));
      store_floats<K>(drow + c, v);
    }
  }
}

}  // namespace

void cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale, Tensor& nll, Tensor* dlogits) {
  const char* op = "cross_entropy";
  check_tensor(logits, op, "logits", {DType::F32, DType::BF16});
  check_tensor(labels, op, "labels", {DType::I32});
  check_tensor(nll, op, "nll", {DType::F32});
  use_device(logits);
  LRSA_CHECK(logits.dim() == 2 && labels.numel() == logits.size(0) && nll.numel() == logits.size(0),
             "{}: shapes do not agree: logits {} (must be [N, V]), labels {}, nll {}", op, logits.describe(),
             labels.describe(), nll.describe());
  if (dlogits != nullptr) {
    check_tensor(*dlogits, op, "dlogits", {DType::F32, DType::BF16});
    LRSA_CHECK(dlogits->shape() == logits.shape(), "{}: dlogits {} must match logits {}", op, dlogits->describe(),
               logits.describe());
  }
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (rows == 0) return;
  check_indices(op, "labels", labels, vocab, ops::kIgnoreIndex);
  const bool vector = packable(vocab, {logits.data(), dlogits == nullptr ? logits.data() : dlogits->data()});
  const DType dtype_d = dlogits == nullptr ? logits.dtype() : dlogits->dtype();
  dispatch_float(logits.dtype(), op, [&](auto* ltag) {
    using TL = std::remove_pointer_t<decltype(ltag)>;
    dispatch_float(dtype_d, op, [&](auto* dtag) {
      using TD = std::remove_pointer_t<decltype(dtag)>;
      TD* dp = dlogits == nullptr ? nullptr : static_cast<TD*>(dlogits->data());
      dispatch_pack<TL, TD>(vector, [&](auto k) {
        const auto kernel = cross_entropy_kernel<k(), TL, TD>;
        kernel<<<resident_grid(kernel, kCeThreads, 0, rows), kCeThreads, 0, current_stream()>>>(
            static_cast<const TL*>(logits.data()), labels.data_as<int32_t>(), grad_scale, nll.data_as<float>(), dp,
            rows, vocab);
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace lrsa::cuda
