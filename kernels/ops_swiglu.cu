// SwiGLU on the fused gate/up buffer: gate_up [N, 2F] (gate = columns [0, F), up = [F, 2F)),
// h [N, F]. Elementwise over packs of K adjacent columns of one row, fp32 arithmetic.
#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"

namespace lrsa::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// Pack p covers h[row, c .. c+K) with row = p / (F / K): a pack never crosses a row (F % K == 0).
template <int K, typename T>
__global__ void swiglu_forward_kernel(const T* gate_up, T* h, int64_t packs, int64_t width) {
  const int64_t row_packs = width / K;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / row_packs, c = (p % row_packs) * K;
    const T* g_ptr = gate_up + row * 2 * width + c;
    float g[K], u[K], out[K];
    load_floats<K>(g_ptr, g);
    load_floats<K>(g_ptr + width, u);
#pragma unroll
    for (int j = 0; j < K; ++j) out[j] = g[j] * sigmoid(g[j]) * u[j];
    store_floats<K>(h + p * K, out);
  }
}

// dgate = dh * up * silu'(gate), silu'(g) = s * (1 + g * (1 - s)); dup = dh * silu(gate).
// dgate_up may alias gate_up: a thread reads its gate/up pack before writing the same pack.
template <int K, typename T>
__global__ void swiglu_backward_kernel(const T* dh, const T* gate_up, T* dgate_up, int64_t packs, int64_t width) {
  const int64_t row_packs = width / K;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / row_packs, c = (p % row_packs) * K;
    const int64_t gi = row * 2 * width + c;
    float g[K], u[K], d[K], dg[K], du[K];
    load_floats<K>(gate_up + gi, g);
    load_floats<K>(gate_up + gi + width, u);
    load_floats<K>(dh + p * K, d);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float s = sigmoid(g[j]);
      du[j] = d[j] * g[j] * s;
      dg[j] = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
    }
    store_floats<K>(dgate_up + gi, dg);
    store_floats<K>(dgate_up + gi + width, du);
  }
}

// F = the width of h; checks the shapes shared by forward and backward.
int64_t swiglu_width(const char* op, const Tensor& gate_up, const Tensor& h, const char* h_name) {
  LRSA_CHECK(gate_up.dim() >= 1 && h.dim() == gate_up.dim() && gate_up.size(-1) == 2 * h.size(-1) &&
                 gate_up.numel() == 2 * h.numel(),
             "{}: gate_up {} must be [N, 2F] for {} {} [N, F]", op, gate_up.describe(), h_name, h.describe());
  return h.size(-1);
}

}  // namespace

void swiglu_forward(const Tensor& gate_up, Tensor& h) {
  const char* op = "swiglu_forward";
  check_tensor(gate_up, op, "gate_up", {DType::F32, DType::BF16});
  check_tensor(h, op, "h", {gate_up.dtype()});
  use_device(gate_up);
  const int64_t width = swiglu_width(op, gate_up, h, "h"), n = h.numel();
  if (n == 0) return;
  const bool vector = width % kPack == 0 && packable(n, {gate_up.data(), h.data()});
  dispatch_float(h.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_pack<T>(vector, [&](auto k) {
      swiglu_forward_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(
          static_cast<const T*>(gate_up.data()), static_cast<T*>(h.data()), n / k(), width);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

void swiglu_backward(const Tensor& dh, const Tensor& gate_up, Tensor& dgate_up) {
  const char* op = "swiglu_backward";
  check_tensor(gate_up, op, "gate_up", {DType::F32, DType::BF16});
  check_tensor(dh, op, "dh", {gate_up.dtype()});
  check_tensor(dgate_up, op, "dgate_up", {gate_up.dtype()});
  use_device(gate_up);
  const int64_t width = swiglu_width(op, gate_up, dh, "dh"), n = dh.numel();
  LRSA_CHECK(dgate_up.shape() == gate_up.shape(), "{}: dgate_up {} must match gate_up {}", op, dgate_up.describe(),
             gate_up.describe());
  if (n == 0) return;
  const bool vector = width % kPack == 0 && packable(n, {dh.data(), gate_up.data(), dgate_up.data()});
  dispatch_float(dh.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_pack<T>(vector, [&](auto k) {
      swiglu_backward_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(
          static_cast<const T*>(dh.data()), static_cast<const T*>(gate_up.data()), static_cast<T*>(dgate_up.data()),
          n / k(), width);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace lrsa::cuda
