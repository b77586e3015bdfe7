#include "lrsa/ops/rope.h"

#include <cmath>
#include <vector>

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

void check_rope(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_tensor(x, op, "x", {DType::F32, DType::BF16}, /*need_contiguous=*/false);
  LRSA_CHECK(x.dim() == 3 && x.size(2) % 2 == 0, "{}: x must be [T, H, D] with D even, got {}", op, x.describe());
  LRSA_CHECK(x.stride(2) == 1 && (x.size(1) == 1 || x.stride(1) == x.size(2)) &&
                 (x.size(0) == 1 || x.stride(0) >= x.size(1) * x.size(2)),
             "{}: x must have contiguous [H, D] rows (strides [>= H*D, D, 1]), got {} with strides {}", op,
             x.describe(), shape_str(x.strides()));
  check_tensor(positions, op, "positions", {DType::I32});
  check_shape(positions, op, "positions", {x.size(0)});
  check_tensor(inv_freq, op, "inv_freq", {DType::F32});
  check_shape(inv_freq, op, "inv_freq", {x.size(2) / 2});
  check_same_device(op, {&x, &positions, &inv_freq});
}

// Rotates every head of every token by +angle (forward) or -angle (backward: the transpose of
// an orthogonal rotation). cos/sin are computed once per (token, frequency) and shared by heads.
template <typename T>
void rope_cpu(T* x, int64_t token_stride, int64_t tokens, int64_t heads, int64_t D, const int32_t* positions,
              const float* inv_freq, bool inverse) {
  const int64_t half = D / 2;
#pragma omp parallel if (tokens * heads * D > cpu::kParallelElements)
  {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
#pragma omp for
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = float(positions[t]) * inv_freq[i];
        cos_t[size_t(i)] = std::cos(angle);
        sin_t[size_t(i)] = inverse ? -std::sin(angle) : std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + t * token_stride + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = cpu::load(v, i), x2 = cpu::load(v, i + half);
          const float c = cos_t[size_t(i)], s = sin_t[size_t(i)];
          cpu::store(v, i, x1 * c - x2 * s);
          cpu::store(v, i + half, x2 * c + x1 * s);
        }
      }
    }
  }
}

void rope_apply(const char* op, Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool inverse) {
  check_rope(op, x, positions, inv_freq);
  LRSA_DISPATCH_CUDA(x.device(), op, cuda::rope_apply(x, positions, inv_freq, inverse));
  cpu::visit_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    rope_cpu(x.data_as<T>(), x.stride(0), x.size(0), x.size(1), x.size(2), positions.data_as<int32_t>(),
             inv_freq.data_as<float>(), inverse);
  });
}

}  // namespace

// transformers: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), all
// in f32: the exponent is an f32 division, the power and the reciprocal are f32 operations.
Tensor rope_inv_freq(int64_t head_dim, double theta) {
  LRSA_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope_inv_freq: head_dim must be positive and even, got {}", head_dim);
  LRSA_CHECK(theta > 0, "rope_inv_freq: theta must be positive, got {}", theta);
  std::vector<float> inv(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = float(2 * i) / float(head_dim);
    inv[size_t(i)] = 1.0f / std::pow(float(theta), exponent);
  }
  return Tensor::from_floats(inv, {head_dim / 2});
}

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  rope_apply("rope_forward", x, positions, inv_freq, false);
}

void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  rope_apply("rope_backward", dx, positions, inv_freq, true);
}

}  // namespace lrsa::ops
