#include "lrsa/ops/swiglu.h"

#include <cmath>

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

// Returns F after checking gate_up [N, 2F] and a [N, F] companion (h or dh) of the same dtype.
int64_t check_swiglu(const char* op, const Tensor& gate_up, const Tensor& half, const char* half_name) {
  check_tensor(gate_up, op, "gate_up", {DType::F32, DType::BF16});
  LRSA_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "{}: gate_up must be [N, 2F], got {}", op,
             gate_up.describe());
  const int64_t F = gate_up.size(1) / 2;
  check_tensor(half, op, half_name, {gate_up.dtype()});
  check_shape(half, op, half_name, {gate_up.size(0), F});
  return F;
}

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

template <typename T>
void forward_cpu(const T* gate_up, T* h, int64_t N, int64_t F) {
#pragma omp parallel for if (N * F > cpu::kParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = gate_up + n * 2 * F;
    for (int64_t j = 0; j < F; ++j) {
      const float g = cpu::load(row, j);
      cpu::store(h + n * F, j, g * sigmoid(g) * cpu::load(row, F + j));
    }
  }
}

// d gate = dh * up * s * (1 + g * (1 - s)),  d up = dh * silu(g),  s = sigmoid(g). Both inputs of
// column j are loaded before either output is stored, so dgate_up may alias gate_up.
template <typename T>
void backward_cpu(const T* dh, const T* gate_up, T* dgate_up, int64_t N, int64_t F) {
#pragma omp parallel for if (N * F > cpu::kParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = gate_up + n * 2 * F;
    T* drow = dgate_up + n * 2 * F;
    for (int64_t j = 0; j < F; ++j) {
      const float g = cpu::load(row, j), u = cpu::load(row, F + j), d = cpu::load(dh + n * F, j);
      const float s = sigmoid(g);
      cpu::store(drow, j, d * u * s * (1.0f + g * (1.0f - s)));
      cpu::store(drow, F + j, d * g * s);
    }
  }
}

}  // namespace

void swiglu_forward(const Tensor& gate_up, Tensor& h) {
  const int64_t F = check_swiglu("swiglu_forward", gate_up, h, "h");
  check_same_device("swiglu_forward", {&gate_up, &h});
  LRSA_DISPATCH_CUDA(gate_up.device(), "swiglu_forward", cuda::swiglu_forward(gate_up, h));
  cpu::visit_float(gate_up.dtype(), [&](auto tag) {
    using T = decltype(tag);
    forward_cpu(gate_up.data_as<T>(), h.data_as<T>(), gate_up.size(0), F);
  });
}

void swiglu_backward(const Tensor& dh, const Tensor& gate_up, Tensor& dgate_up) {
  const int64_t F = check_swiglu("swiglu_backward", gate_up, dh, "dh");
  check_tensor(dgate_up, "swiglu_backward", "dgate_up", {gate_up.dtype()});
  check_shape(dgate_up, "swiglu_backward", "dgate_up", gate_up.shape());
  check_same_device("swiglu_backward", {&dh, &gate_up, &dgate_up});
  LRSA_DISPATCH_CUDA(gate_up.device(), "swiglu_backward", cuda::swiglu_backward(dh, gate_up, dgate_up));
  cpu::visit_float(gate_up.dtype(), [&](auto tag) {
    using T = decltype(tag);
    backward_cpu(dh.data_as<T>(), gate_up.data_as<T>(), dgate_up.data_as<T>(), gate_up.size(0), F);
  });
}

}  // namespace lrsa::ops
