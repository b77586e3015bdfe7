#include "lrsa/ops/rmsnorm.h"

#include <algorithm>
#include <cmath>

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

void check_rmsnorm_inputs(const char* op, const Tensor& x, const Tensor& w) {
  check_tensor(x, op, "x", {DType::F32, DType::BF16});
  LRSA_CHECK(x.dim() == 2, "{}: x must be [N, C], got {}", op, x.describe());
  check_tensor(w, op, "w", {x.dtype(), DType::F32});
  check_shape(w, op, "w", {x.size(1)});
}

// x [N, C], w [C] -> y [N, C], rstd [N]; one row per iteration, statistics in fp32.
template <typename T, typename TW>
void forward_cpu(const T* x, const TW* w, float eps, int64_t N, int64_t C, T* y, float* rstd) {
#pragma omp parallel for if (N * C > cpu::kParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    float ss = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
      const float v = cpu::load(xr, c);
      ss += v * v;
    }
    const float r = 1.0f / std::sqrt(ss / float(C) + eps);
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) cpu::store(y + n * C, c, cpu::load(xr, c) * r * cpu::load(w, c));
  }
}

// With xhat = x * rstd and g = dy * w:  dx = rstd * (g - xhat * mean(g * xhat)),  dw (+)= sum_n dy * xhat.
// dw first (column-parallel, rows summed in order: deterministic), then dx row-parallel, so dx may
// alias dy (or residual, added to dx when not null).
template <typename T, typename TW>
void backward_cpu(const T* dy, const T* x, const TW* w, const float* rstd, const T* residual, int64_t N, int64_t C, T* dx,
                  float* dw, bool accumulate) {
  const bool parallel = N * C > cpu::kParallelElements;
  constexpr int64_t kCols = 64;
#pragma omp parallel for if (parallel)
  for (int64_t c0 = 0; c0 < C; c0 += kCols) {
    const int64_t c1 = std::min(C, c0 + kCols);
    float sum[kCols] = {};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = c0; c < c1; ++c) sum[c - c0] += cpu::load(dy + n * C, c) * cpu::load(x + n * C, c) * rstd[n];
    for (int64_t c = c0; c < c1; ++c) dw[c] = accumulate ? dw[c] + sum[c - c0] : sum[c - c0];
  }
#pragma omp parallel for if (parallel)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* dyr = dy + n * C;
    const float r = rstd[n];
    float dot = 0.0f;  // sum_c g * xhat
    for (int64_t c = 0; c < C; ++c) dot += cpu::load(dyr, c) * cpu::load(w, c) * cpu::load(xr, c) * r;
    const float mean_dot = dot / float(C);
    for (int64_t c = 0; c < C; ++c) {
      const float g = cpu::load(dyr, c) * cpu::load(w, c);
      const float add = residual != nullptr ? cpu::load(residual + n * C, c) : 0.0f;
      cpu::store(dx + n * C, c, r * (g - cpu::load(xr, c) * r * mean_dot) + add);
    }
  }
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  check_rmsnorm_inputs("rmsnorm_forward", x, w);
  check_tensor(y, "rmsnorm_forward", "y", {x.dtype()});
  check_shape(y, "rmsnorm_forward", "y", x.shape());
  check_tensor(rstd, "rmsnorm_forward", "rstd", {DType::F32});
  check_shape(rstd, "rmsnorm_forward", "rstd", {x.size(0)});
  check_same_device("rmsnorm_forward", {&x, &w, &y, &rstd});
  LRSA_DISPATCH_CUDA(x.device(), "rmsnorm_forward", cuda::rmsnorm_forward(x, w, eps, y, rstd));
  cpu::visit_float(x.dtype(), [&](auto tx) {
    using T = decltype(tx);
    cpu::visit_float(w.dtype(), [&](auto tw) {
      using TW = decltype(tw);
      forward_cpu(x.data_as<T>(), w.data_as<TW>(), eps, x.size(0), x.size(1), y.data_as<T>(), rstd.data_as<float>());
    });
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw,
                      GradWrite dw_write, const Tensor& residual) {
  check_rmsnorm_inputs("rmsnorm_backward", x, w);
  check_tensor(dy, "rmsnorm_backward", "dy", {x.dtype()});
  check_shape(dy, "rmsnorm_backward", "dy", x.shape());
  check_tensor(rstd, "rmsnorm_backward", "rstd", {DType::F32});
  check_shape(rstd, "rmsnorm_backward", "rstd", {x.size(0)});
  check_tensor(dx, "rmsnorm_backward", "dx", {x.dtype()});
  check_shape(dx, "rmsnorm_backward", "dx", x.shape());
  check_tensor(dw, "rmsnorm_backward", "dw", {DType::F32});
  check_shape(dw, "rmsnorm_backward", "dw", {x.size(1)});
  check_same_device("rmsnorm_backward", {&dy, &x, &w, &rstd, &dx, &dw});
  if (residual.defined()) {
    check_tensor(residual, "rmsnorm_backward", "residual", {x.dtype()});
    check_shape(residual, "rmsnorm_backward", "residual", x.shape());
    check_same_device("rmsnorm_backward", {&x, &residual});
  }
  LRSA_DISPATCH_CUDA(x.device(), "rmsnorm_backward",
                     cuda::rmsnorm_backward(dy, x, w, rstd, dx, dw, dw_write, residual));
  cpu::visit_float(x.dtype(), [&](auto tx) {
    using T = decltype(tx);
    cpu::visit_float(w.dtype(), [&](auto tw) {
      using TW = decltype(tw);
      backward_cpu(dy.data_as<T>(), x.data_as<T>(), w.data_as<TW>(), rstd.data_as<float>(),
                   residual.defined() ? residual.data_as<T>() : nullptr, x.size(0), x.size(1), dx.data_as<T>(),
                   dw.data_as<float>(), dw_write == GradWrite::Accumulate);
    });
  });
}

}  // namespace lrsa::ops
