#include <catch2/catch.hpp>

#include <cmath>

#include "lrsa/ops/swiglu.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

template <typename Acc>
Acc silu(Acc g) {
  return g / (Acc(1) + std::exp(-g));
}

// h [N, F] = silu(gate) * up in Acc.
template <typename Acc>
std::vector<double> forward_ref(const std::vector<double>& gu, int64_t N, int64_t F) {
  std::vector<double> h(size_t(N * F));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < F; ++j)
      h[size_t(n * F + j)] = double(silu(Acc(gu[size_t(n * 2 * F + j)])) * Acc(gu[size_t(n * 2 * F + F + j)]));
  return h;
}

// d gate = dh * up * silu'(gate), d up = dh * silu(gate), silu'(g) = s (1 + g (1 - s)).
template <typename Acc>
std::vector<double> backward_ref(const std::vector<double>& dh, const std::vector<double>& gu, int64_t N, int64_t F) {
  std::vector<double> d(gu.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < F; ++j) {
      const Acc g = Acc(gu[size_t(n * 2 * F + j)]), u = Acc(gu[size_t(n * 2 * F + F + j)]), dhv = Acc(dh[size_t(n * F + j)]);
      const Acc s = Acc(1) / (Acc(1) + std::exp(-g));
      d[size_t(n * 2 * F + j)] = double(dhv * u * s * (Acc(1) + g * (Acc(1) - s)));
      d[size_t(n * 2 * F + F + j)] = double(dhv * silu(g));
    }
  return d;
}

struct Run {
  std::vector<double> h, dgate_up, dgate_up_inplace;
};

Run run_swiglu(const Tensor& gate_up, const Tensor& dh, Device device) {
  const int64_t N = gate_up.size(0), F = gate_up.size(1) / 2;
  const Tensor gu = gate_up.to(device);
  Tensor h = Tensor::empty({N, F}, gate_up.dtype(), device), d = Tensor::empty({N, 2 * F}, gate_up.dtype(), device);
  ops::swiglu_forward(gu, h);
  ops::swiglu_backward(dh.to(device), gu, d);
  Tensor inplace = gu.clone();
  ops::swiglu_backward(dh.to(device), inplace, inplace);
  return {h.to_doubles(), d.to_doubles(), inplace.to_doubles()};
}

}  // namespace

TEST_CASE("swiglu forward matches fp64; backward matches finite differences and may run in place (f32)", "[ops]") {
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {16, 37}, {7, 300}};
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    const int64_t N = s[0], F = s[1];
    CAPTURE(N, F);
    const Tensor gate_up = randn({N, 2 * F}, seed++, DType::F32, 2.0f), dh = randn({N, F}, seed++);
    const Run r = run_swiglu(gate_up, dh, Device::cpu());
    const auto gu = gate_up.to_doubles(), dhv = dh.to_doubles();
    check_close(r.h, forward_ref<double>(gu, N, F), 2e-6);
    const auto d_ref = backward_ref<double>(dhv, gu, N, F);
    check_close(r.dgate_up, d_ref, 2e-6);
    CHECK(r.dgate_up_inplace == r.dgate_up);
    if (N * F <= 100)
      check_close(d_ref, finite_diff([&](const std::vector<double>& x) { return dot(forward_ref<double>(x, N, F), dhv); }, gu), 1e-7);
  }
}

TEST_CASE("swiglu bf16 follows the tolerance rule", "[ops]") {
  const int64_t N = 24, F = 130;
  const Tensor gate_up = randn({N, 2 * F}, 5, DType::BF16, 3.0f), dh = randn({N, F}, 6, DType::BF16);
  const Run r = run_swiglu(gate_up, dh, Device::cpu());
  const auto gu = gate_up.to_doubles(), dhv = dh.to_doubles();
  check_rule(r.h, round_to(forward_ref<float>(gu, N, F), DType::BF16), forward_ref<double>(gu, N, F));
  check_rule(r.dgate_up, round_to(backward_ref<float>(dhv, gu, N, F), DType::BF16), backward_ref<double>(dhv, gu, N, F));
  CHECK(r.dgate_up_inplace == r.dgate_up);
}

TEST_CASE("swiglu rejects bad arguments with clear errors", "[ops]") {
  Tensor h = Tensor::empty({4, 3}, DType::F32);
  CHECK_THROWS_WITH(ops::swiglu_forward(randn({4, 7}, 1), h), Catch::Contains("swiglu_forward: gate_up must be [N, 2F], got f32[4, 7]"));
  CHECK_THROWS_WITH(ops::swiglu_forward(randn({4, 8}, 1), h), Catch::Contains("swiglu_forward: h must have shape [4, 4], got f32[4, 3]"));
  Tensor h_bf16 = Tensor::empty({4, 3}, DType::BF16);
  CHECK_THROWS_WITH(ops::swiglu_forward(randn({4, 6}, 1), h_bf16), Catch::Contains("swiglu_forward: h must be f32, got bf16[4, 3]"));
  Tensor d = Tensor::empty({4, 5}, DType::F32);
  CHECK_THROWS_WITH(ops::swiglu_backward(randn({4, 3}, 1), randn({4, 6}, 2), d), Catch::Contains("swiglu_backward: dgate_up must have shape [4, 6]"));
}

TEST_CASE("swiglu on CUDA matches the CPU within the tolerance rule", "[ops][cuda]") {
  const int64_t N = 53, F = 700;
  for (DType dtype : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dtype));
    const Tensor gate_up = randn({N, 2 * F}, 11, dtype, 3.0f), dh = randn({N, F}, 12, dtype);
    const Run gpu = run_swiglu(gate_up, dh, Device::cuda(0)), cpu = run_swiglu(gate_up, dh, Device::cpu());
    const auto gu = gate_up.to_doubles(), dhv = dh.to_doubles();
    check_rule(gpu.h, cpu.h, forward_ref<double>(gu, N, F));
    check_rule(gpu.dgate_up, cpu.dgate_up, backward_ref<double>(dhv, gu, N, F));
    check_rule(gpu.dgate_up_inplace, cpu.dgate_up, backward_ref<double>(dhv, gu, N, F));
  }
}
