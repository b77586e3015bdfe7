#include "lrsa/ops/optimizer.h"

#include <algorithm>
#include <cmath>

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

void check_adamw(const std::vector<AdamWTensors>& tensors, const AdamWConfig& config) {
  LRSA_CHECK(config.step >= 1, "adamw_step: config.step is 1-based, got {}", config.step);
  LRSA_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
             "adamw_step: betas must lie in [0, 1), got beta1 {} beta2 {}", config.beta1, config.beta2);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensors& t = tensors[i];
    const std::string op = fmt::format("adamw_step (tensor {})", i);
    check_tensor(t.master, op.c_str(), "master", {DType::F32});
    check_tensor(t.m, op.c_str(), "m", {DType::F32});
    check_tensor(t.v, op.c_str(), "v", {DType::F32});
    check_tensor(t.grad, op.c_str(), "grad", {DType::F32, DType::BF16});
    check_shape(t.m, op.c_str(), "m", t.master.shape());
    check_shape(t.v, op.c_str(), "v", t.master.shape());
    check_shape(t.grad, op.c_str(), "grad", t.master.shape());
    if (t.param.defined()) {
      check_tensor(t.param, op.c_str(), "param", {DType::F32, DType::BF16});
      check_shape(t.param, op.c_str(), "param", t.master.shape());
    }
    check_same_device(op.c_str(), {&tensors[0].master, &t.master, &t.m, &t.v, &t.grad, &t.param});
  }
}

template <typename TG>
void adamw_cpu(const AdamWTensors& t, const AdamWConfig& config, float grad_scale, float bias_correction1,
               float bias_correction2) {
  float* master = t.master.data_as<float>();
  float* m = t.m.data_as<float>();
  float* v = t.v.data_as<float>();
  const TG* grad = t.grad.data_as<TG>();
  const int64_t n = t.master.numel();
  const float b1 = config.beta1, b2 = config.beta2, lr = config.lr, eps = config.eps, wd = config.weight_decay;
#pragma omp parallel for if (n > cpu::kParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const float g = cpu::load(grad, i) * grad_scale;
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    const float m_hat = m[i] / bias_correction1, v_hat = v[i] / bias_correction2;
    master[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * master[i]);
  }
}

}  // namespace

void adamw_step(const std::vector<AdamWTensors>& tensors, const AdamWConfig& config, float grad_scale) {
  check_adamw(tensors, config);
  if (tensors.empty()) return;
  LRSA_DISPATCH_CUDA(tensors[0].master.device(), "adamw_step", cuda::adamw_step(tensors, config, grad_scale));
  const float bias_correction1 = float(1.0 - std::pow(double(config.beta1), double(config.step)));
  const float bias_correction2 = float(1.0 - std::pow(double(config.beta2), double(config.step)));
  for (const AdamWTensors& t : tensors) {
    cpu::visit_float(t.grad.dtype(), [&](auto tag) {
      adamw_cpu<decltype(tag)>(t, config, grad_scale, bias_correction1, bias_correction2);
    });
    if (t.param.defined()) {
      Tensor param = t.param;  // a handle: writes go to the caller's storage
      param.copy_(t.master);   // the working copy, rounded once
    }
  }
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = fmt::format("grads[{}]", i);
    check_tensor(grads[i], "global_grad_norm", name.c_str(), {DType::F32, DType::BF16});
    check_same_device("global_grad_norm", {&grads[0], &grads[i]});
  }
  if (grads.empty()) return 0.0;
  if (grads[0].device().is_cuda()) {
#ifdef LRSA_WITH_CUDA
    return cuda::global_grad_norm(grads);
#else
    fail("global_grad_norm: tensors are on {}, but this build has no CUDA backend", grads[0].device().str());
#endif
  }
  // Fixed-size blocks summed in fp64, then the block sums in order: the result does not depend on
  // the thread count. NaN and Inf propagate through the sums.
  constexpr int64_t kBlock = 1 << 16;
  double total = 0.0;
  for (const Tensor& g : grads) {
    const int64_t n = g.numel(), blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(size_t(blocks), 0.0);
    cpu::visit_float(g.dtype(), [&](auto tag) {
      const auto* p = g.data_as<decltype(tag)>();
#pragma omp parallel for if (blocks > 1)
      for (int64_t b = 0; b < blocks; ++b) {
        double s = 0.0;
        for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
          const double x = cpu::load(p, i);
          s += x * x;
        }
        partial[size_t(b)] = s;
      }
    });
    for (double s : partial) total += s;
  }
  return std::sqrt(total);
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  if (std::isnan(norm)) return float(norm);  // a NaN norm must not be hidden by the min
  return float(std::min(1.0, max_norm / norm));
}

}  // namespace lrsa::ops
