#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "lrsa/ops/optimizer.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

struct ParamSpec {
  Shape shape;
  DType grad_dtype;
  bool has_param;
  DType param_dtype;
};

// Parameters covering both gradient dtypes, both working-copy dtypes, no working copy, and one
// large enough for the parallel path.
const std::vector<ParamSpec> kSpecs = {
    {{13}, DType::F32, true, DType::BF16},
    {{4, 50}, DType::BF16, true, DType::F32},
    {{40000}, DType::F32, false, DType::F32},
};

struct State {
  std::vector<std::vector<double>> master, m, v;
};

// PyTorch's AdamW in fp64: p *= 1 - lr wd; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
void adamw_ref(State& s, const std::vector<std::vector<double>>& grads, const ops::AdamWConfig& c, double grad_scale) {
  const double bc1 = 1 - std::pow(double(c.beta1), double(c.step)), bc2 = 1 - std::pow(double(c.beta2), double(c.step));
  for (size_t t = 0; t < grads.size(); ++t)
    for (size_t i = 0; i < grads[t].size(); ++i) {
      const double g = grads[t][i] * grad_scale;
      double &p = s.master[t][i], &m = s.m[t][i], &v = s.v[t][i];
      m = c.beta1 * m + (1 - double(c.beta1)) * g;
      v = c.beta2 * v + (1 - double(c.beta2)) * g * g;
      p *= 1 - double(c.lr) * c.weight_decay;
      p -= double(c.lr) / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + c.eps);
    }
}

std::vector<ops::AdamWTensors> make_tensors(Device device) {
  std::vector<ops::AdamWTensors> tensors;
  uint64_t seed = 1;
  for (const ParamSpec& p : kSpecs) {
    ops::AdamWTensors t;
    t.master = randn(p.shape, seed++, DType::F32).to(device);
    t.m = Tensor::zeros(p.shape, DType::F32, device);
    t.v = Tensor::zeros(p.shape, DType::F32, device);
    t.grad = Tensor::zeros(p.shape, p.grad_dtype, device);
    if (p.has_param) t.param = Tensor::zeros(p.shape, p.param_dtype, device);
    tensors.push_back(t);
  }
  return tensors;
}

// Runs `steps` AdamW steps with fresh gradients each step.
void run_steps(std::vector<ops::AdamWTensors>& tensors, ops::AdamWConfig config, float grad_scale, int steps,
               State* ref) {
  for (int step = 1; step <= steps; ++step) {
    config.step = step;
    std::vector<std::vector<double>> grads;
    for (size_t t = 0; t < tensors.size(); ++t) {
      const Tensor g = randn(kSpecs[t].shape, 100 + uint64_t(step) * 10 + t, kSpecs[t].grad_dtype, 0.1f);
      tensors[t].grad.copy_(g);
      grads.push_back(g.to_doubles());
    }
    ops::adamw_step(tensors, config, grad_scale);
    if (ref != nullptr) adamw_ref(*ref, grads, config, grad_scale);
  }
}

ops::AdamWConfig test_config() {
  ops::AdamWConfig c;
  c.lr = 1e-2f;
  c.beta1 = 0.9f;
  c.beta2 = 0.95f;
  c.eps = 1e-8f;
  c.weight_decay = 0.1f;
  return c;
}

}  // namespace

TEST_CASE("adamw matches the fp64 PyTorch formula over several steps and rewrites the working copy", "[ops]") {
  auto tensors = make_tensors(Device::cpu());
  State ref;
  for (const auto& t : tensors) {
    ref.master.push_back(t.master.to_doubles());
    ref.m.push_back(t.m.to_doubles());
    ref.v.push_back(t.v.to_doubles());
  }
  run_steps(tensors, test_config(), 0.5f, 3, &ref);
  for (size_t t = 0; t < tensors.size(); ++t) {
    CAPTURE(t);
    check_close(tensors[t].master.to_doubles(), ref.master[t], 1e-6);
    check_close(tensors[t].m.to_doubles(), ref.m[t], 1e-7);
    check_close(tensors[t].v.to_doubles(), ref.v[t], 1e-8);
    if (tensors[t].param.defined())
      CHECK(tensors[t].param.to_doubles() == round_to(tensors[t].master.to_doubles(), kSpecs[t].param_dtype));
  }
  // The update moved the weights (a no-op optimizer would pass the checks above only by accident).
  CHECK(max_abs_diff(tensors[0].master.to_doubles(), randn(kSpecs[0].shape, 1).to_doubles()) > 1e-3);
}

TEST_CASE("global_grad_norm is fp64-accurate and propagates NaN and Inf; clip_scale", "[ops]") {
  const std::vector<Tensor> grads = {randn({200000}, 1, DType::F32, 0.01f), randn({37, 3}, 2, DType::BF16), randn({1}, 3)};
  double sum = 0;
  for (const Tensor& g : grads)
    for (double x : g.to_doubles()) sum += x * x;
  CHECK(std::abs(ops::global_grad_norm(grads) - std::sqrt(sum)) <= 1e-12 * std::sqrt(sum));
  CHECK(ops::global_grad_norm({}) == 0.0);

  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    std::vector<Tensor> with_bad = {grads[0].clone(), grads[1]};
    with_bad[0].slice(0, 123456, 123457).fill_(bad);
    const double norm = ops::global_grad_norm(with_bad);
    CHECK_FALSE(std::isfinite(norm));
    CHECK(std::isnan(norm) == std::isnan(bad));
  }

  CHECK(ops::clip_scale(2.0, 1.0) == 0.5f);
  CHECK(ops::clip_scale(0.5, 1.0) == 1.0f);
  CHECK(ops::clip_scale(0.0, 1.0) == 1.0f);
  CHECK(ops::clip_scale(5.0, 0.0) == 1.0f);  // no clipping
  CHECK(ops::clip_scale(std::numeric_limits<double>::infinity(), 1.0) == 0.0f);
  CHECK(std::isnan(ops::clip_scale(std::numeric_limits<double>::quiet_NaN(), 1.0)));
}

TEST_CASE("adamw and global_grad_norm reject bad arguments with clear errors", "[ops]") {
  auto tensors = make_tensors(Device::cpu());
  ops::AdamWConfig config = test_config();
  config.step = 0;
  CHECK_THROWS_WITH(ops::adamw_step(tensors, config, 1.0f), Catch::Contains("adamw_step: config.step is 1-based, got 0"));
  config.step = 1;
  auto bad = tensors;
  bad[1].m = Tensor::zeros({4, 51}, DType::F32);
  CHECK_THROWS_WITH(ops::adamw_step(bad, config, 1.0f), Catch::Contains("adamw_step (tensor 1): m must have shape [4, 50], got f32[4, 51]"));
  bad = tensors;
  bad[0].v = Tensor::zeros({13}, DType::BF16);
  CHECK_THROWS_WITH(ops::adamw_step(bad, config, 1.0f), Catch::Contains("adamw_step (tensor 0): v must be f32, got bf16[13]"));
  bad = tensors;
  bad[2].param = Tensor::zeros({40001}, DType::BF16);
  CHECK_THROWS_WITH(ops::adamw_step(bad, config, 1.0f), Catch::Contains("param must have shape [40000]"));
  CHECK_THROWS_WITH(ops::global_grad_norm({randn({3}, 1), Tensor::zeros({2}, DType::I32)}),
                    Catch::Contains("global_grad_norm: grads[1] must be f32 or bf16, got i32[2]"));
}

TEST_CASE("adamw and global_grad_norm on CUDA match the CPU within the tolerance rule", "[ops][cuda]") {
  auto cpu = make_tensors(Device::cpu()), gpu = make_tensors(Device::cuda(0));
  State ref;
  for (const auto& t : cpu) {
    ref.master.push_back(t.master.to_doubles());
    ref.m.push_back(t.m.to_doubles());
    ref.v.push_back(t.v.to_doubles());
  }
  run_steps(cpu, test_config(), 0.7f, 3, &ref);
  run_steps(gpu, test_config(), 0.7f, 3, nullptr);
  for (size_t t = 0; t < cpu.size(); ++t) {
    CAPTURE(t);
    check_rule(gpu[t].master.to_doubles(), cpu[t].master.to_doubles(), ref.master[t], 1e-7);
    check_rule(gpu[t].m.to_doubles(), cpu[t].m.to_doubles(), ref.m[t], 1e-8);
    check_rule(gpu[t].v.to_doubles(), cpu[t].v.to_doubles(), ref.v[t], 1e-9);
    if (cpu[t].param.defined())
      CHECK(gpu[t].param.to_doubles() == round_to(gpu[t].master.to_doubles(), kSpecs[t].param_dtype));
  }
  std::vector<Tensor> grads_cpu, grads_gpu;
  for (const auto& t : cpu) {
    grads_cpu.push_back(t.grad);
    grads_gpu.push_back(t.grad.to(Device::cuda(0)));
  }
  const double norm_cpu = ops::global_grad_norm(grads_cpu), norm_gpu = ops::global_grad_norm(grads_gpu);
  CHECK(std::abs(norm_gpu - norm_cpu) <= 1e-5 * norm_cpu);  // fp32 block sums on the GPU
  grads_gpu[0].slice(0, 5, 6).fill_(std::numeric_limits<double>::quiet_NaN());
  CHECK(std::isnan(ops::global_grad_norm(grads_gpu)));
}
