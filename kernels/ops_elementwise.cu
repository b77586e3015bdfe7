// Elementwise ops: out = a + b (the residual add, and a grouped LRSA pass's dQ into the causal
// passes'; any mix of f32/bf16; contiguous tensors or row-strided views) and x *= s (contiguous).
// Grid-stride over packs of K elements with 16-byte accesses; fp32 arithmetic.
#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"

namespace lrsa::cuda {
namespace {

// out may alias a or b: each pack is read before it is written by the same thread. Rows of
// `row_packs` packs lie a_stride, b_stride and out_stride elements apart (one row when all three
// are contiguous: no index division then).
template <int K, typename TA, typename TB, typename TO>
__global__ void add_kernel(const TA* a, int64_t a_stride, const TB* b, int64_t b_stride, TO* out, int64_t out_stride,
                           int64_t rows, int64_t row_packs) {
  const int64_t packs = rows * row_packs;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = rows == 1 ? 0 : p / row_packs, c = (rows == 1 ? p : p % row_packs) * K;
    float x[K], y[K];
    load_floats<K>(a + r * a_stride + c, x);
    load_floats<K>(b + r * b_stride + c, y);
#pragma unroll
    for (int j = 0; j < K; ++j) x[j] += y[j];
    store_floats<K>(out + r * out_stride + c, x);
  }
}

template <int K, typename T>
__global__ void scale_kernel(T* x, float s, int64_t packs) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    float v[K];
    load_floats<K>(x + p * K, v);
#pragma unroll
    for (int j = 0; j < K; ++j) v[j] *= s;
    store_floats<K>(x + p * K, v);
  }
}

}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const char* op = "add";
  check_tensor(a, op, "a", {DType::F32, DType::BF16}, false);
  check_tensor(b, op, "b", {DType::F32, DType::BF16}, false);
  check_tensor(out, op, "out", {DType::F32, DType::BF16}, false);
  use_device(out);
  LRSA_CHECK(a.shape() == b.shape() && a.shape() == out.shape(), "{}: shapes differ: a {}, b {}, out {}", op,
             a.describe(), b.describe(), out.describe());
  const int64_t n = out.numel();
  if (n == 0) return;
  RowLayout la = row_layout(a, op, "a"), lb = row_layout(b, op, "b"), lo = row_layout(out, op, "out");
  if (la.stride == la.width && lb.stride == lb.width && lo.stride == lo.width) {
    la = lb = lo = {1, n, n};  // all contiguous: one row
  }
  const bool vector = packable(lo.width, {a.data(), b.data(), out.data()}) && la.stride % kPack == 0 &&
                      lb.stride % kPack == 0 && lo.stride % kPack == 0;
  dispatch_float(a.dtype(), op, [&](auto* atag) {
    using TA = std::remove_pointer_t<decltype(atag)>;
    dispatch_float(b.dtype(), op, [&](auto* btag) {
      using TB = std::remove_pointer_t<decltype(btag)>;
      dispatch_float(out.dtype(), op, [&](auto* otag) {
        using TO = std::remove_pointer_t<decltype(otag)>;
        dispatch_pack<TA, TB, TO>(vector, [&](auto k) {
          add_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(
              static_cast<const TA*>(a.data()), la.stride, static_cast<const TB*>(b.data()), lb.stride,
              static_cast<TO*>(out.data()), lo.stride, lo.rows, lo.width / k());
        });
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

void scale_(Tensor& x, float s) {
  const char* op = "scale_";
  check_tensor(x, op, "x", {DType::F32, DType::BF16});
  use_device(x);
  const int64_t n = x.numel();
  if (n == 0) return;
  const bool vector = packable(n, {x.data()});
  dispatch_float(x.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_pack<T>(vector, [&](auto k) {
      scale_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(static_cast<T*>(x.data()), s, n / k());
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace lrsa::cuda
