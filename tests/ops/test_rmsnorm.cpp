#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "lrsa/ops/rmsnorm.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

constexpr float kEps = 1e-6f;

// y = x * rstd * w row by row in Acc (double: reference; float: straightforward implementation).
template <typename Acc>
std::vector<double> forward_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t N, int64_t C,
                                std::vector<double>* rstd = nullptr) {
  std::vector<double> y(x.size());
  for (int64_t n = 0; n < N; ++n) {
    Acc ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += Acc(x[size_t(n * C + c)]) * Acc(x[size_t(n * C + c)]);
    const Acc r = Acc(1) / std::sqrt(ss / Acc(C) + Acc(kEps));
    if (rstd != nullptr) rstd->push_back(double(r));
    for (int64_t c = 0; c < C; ++c) y[size_t(n * C + c)] = double(Acc(x[size_t(n * C + c)]) * r * Acc(w[size_t(c)]));
  }
  return y;
}

// Analytic gradient in Acc: dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w; dw = sum dy * xhat.
template <typename Acc>
void backward_ref(const std::vector<double>& dy, const std::vector<double>& x, const std::vector<double>& w, int64_t N,
                  int64_t C, std::vector<double>& dx, std::vector<double>& dw) {
  dx.assign(x.size(), 0.0);
  std::vector<Acc> dw_acc(size_t(C), Acc(0));
  for (int64_t n = 0; n < N; ++n) {
    Acc ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += Acc(x[size_t(n * C + c)]) * Acc(x[size_t(n * C + c)]);
    const Acc r = Acc(1) / std::sqrt(ss / Acc(C) + Acc(kEps));
    Acc dot = 0;
    for (int64_t c = 0; c < C; ++c)
      dot += Acc(dy[size_t(n * C + c)]) * Acc(w[size_t(c)]) * Acc(x[size_t(n * C + c)]) * r;
    for (int64_t c = 0; c < C; ++c) {
      const Acc xhat = Acc(x[size_t(n * C + c)]) * r;
      dx[size_t(n * C + c)] = double(r * (Acc(dy[size_t(n * C + c)]) * Acc(w[size_t(c)]) - xhat * dot / Acc(C)));
      dw_acc[size_t(c)] += Acc(dy[size_t(n * C + c)]) * xhat;
    }
  }
  dw.assign(dw_acc.begin(), dw_acc.end());
}

struct Run {
  std::vector<double> y, rstd, dx, dw;
};

// Forward and backward of our op on `device`; dx includes `residual` if defined. dw is added to
// dw0 (Accumulate) or, starting from NaN, overwritten (Overwrite: the old values must not be read).
Run run_rmsnorm(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dw0, Device device,
                const Tensor& residual = Tensor(), ops::GradWrite write = ops::GradWrite::Accumulate) {
  const int64_t N = x.size(0), C = x.size(1);
  const Tensor xd = x.to(device), wd = w.to(device), dyd = dy.to(device);
  Tensor y = Tensor::empty({N, C}, x.dtype(), device), rstd = Tensor::empty({N}, DType::F32, device);
  Tensor dx = Tensor::empty({N, C}, x.dtype(), device), dw = dw0.to(device).clone();
  if (write == ops::GradWrite::Overwrite) dw.fill_(std::numeric_limits<double>::quiet_NaN());
  ops::rmsnorm_forward(xd, wd, kEps, y, rstd);
  ops::rmsnorm_backward(dyd, xd, wd, rstd, dx, dw, write, residual.defined() ? residual.to(device) : Tensor());
  return {y.to_doubles(), rstd.to_doubles(), dx.to_doubles(), dw.to_doubles()};
}

std::vector<double> plus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> s(a.size());
  for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
  return s;
}

}  // namespace

TEST_CASE("rmsnorm forward matches fp64 and its backward matches finite differences (f32)", "[ops]") {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {4, 33}, {17, 96}, {5, 1000}};
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    const int64_t N = s[0], C = s[1];
    CAPTURE(N, C);
    const Tensor x = randn({N, C}, seed++), w = randn({C}, seed++, DType::F32, 0.5f), dy = randn({N, C}, seed++);
    const Tensor dw0 = randn({C}, seed++);
    const Run r = run_rmsnorm(x, w, dy, dw0, Device::cpu());
    const Run overwritten = run_rmsnorm(x, w, dy, dw0, Device::cpu(), Tensor(), ops::GradWrite::Overwrite);
    const auto xv = x.to_doubles(), wv = w.to_doubles(), dyv = dy.to_doubles();
    std::vector<double> rstd_ref;
    check_close(r.y, forward_ref<double>(xv, wv, N, C, &rstd_ref), 2e-6);
    check_close(r.rstd, rstd_ref, 2e-6);

    std::vector<double> dx_ref, dw_ref;
    backward_ref<double>(dyv, xv, wv, N, C, dx_ref, dw_ref);
    check_close(r.dx, dx_ref, 1e-5);
    check_close(r.dw, plus(dw0.to_doubles(), dw_ref), 1e-5);
    check_close(overwritten.dw, dw_ref, 1e-5);
    CHECK(overwritten.dx == r.dx);
    if (N * C <= 200) {  // the analytic reference itself against finite differences of L = <y, dy>
      check_close(dx_ref, finite_diff([&](const std::vector<double>& xx) { return dot(forward_ref<double>(xx, wv, N, C), dyv); }, xv), 1e-7);
      check_close(dw_ref, finite_diff([&](const std::vector<double>& ww) { return dot(forward_ref<double>(xv, ww, N, C), dyv); }, wv), 1e-7);
    }
  }
}

TEST_CASE("rmsnorm bf16 (bf16 or f32 weight, with or without residual) follows the tolerance rule", "[ops]") {
  const int64_t N = 9, C = 200;
  uint64_t seed = 50;
  for (DType w_dtype : {DType::BF16, DType::F32}) {
    for (bool with_residual : {false, true}) {
      CAPTURE(dtype_name(w_dtype), with_residual);
      const Tensor x = randn({N, C}, seed++, DType::BF16, 2.0f), w = randn({C}, seed++, w_dtype);
      const Tensor dy = randn({N, C}, seed++, DType::BF16), dw0 = Tensor::zeros({C}, DType::F32);
      const Tensor residual = with_residual ? randn({N, C}, seed++, DType::BF16) : Tensor();
      const Run r = run_rmsnorm(x, w, dy, dw0, Device::cpu(), residual);
      const auto xv = x.to_doubles(), wv = w.to_doubles(), dyv = dy.to_doubles();
      check_rule(r.y, round_to(forward_ref<float>(xv, wv, N, C), DType::BF16), forward_ref<double>(xv, wv, N, C));
      std::vector<double> dx_ref, dw_ref, dx_base, dw_base;
      backward_ref<double>(dyv, xv, wv, N, C, dx_ref, dw_ref);
      backward_ref<float>(dyv, xv, wv, N, C, dx_base, dw_base);
      if (with_residual) {
        dx_ref = plus(dx_ref, residual.to_doubles());
        dx_base = plus(dx_base, residual.to_doubles());
      }
      check_rule(r.dx, round_to(dx_base, DType::BF16), dx_ref);
      check_rule(r.dw, dw_base, dw_ref);
    }
  }
}

TEST_CASE("rmsnorm_backward allows dx to alias dy or the residual", "[ops]") {
  const Tensor x = randn({6, 40}, 1), w = randn({40}, 2), dy = randn({6, 40}, 3);
  Tensor y = Tensor::empty({6, 40}, DType::F32), rstd = Tensor::empty({6}, DType::F32);
  ops::rmsnorm_forward(x, w, kEps, y, rstd);
  Tensor dx = Tensor::empty({6, 40}, DType::F32), dw = Tensor::zeros({40}, DType::F32);
  ops::rmsnorm_backward(dy, x, w, rstd, dx, dw, ops::GradWrite::Accumulate);
  Tensor inplace = dy.clone(), dw2 = Tensor::zeros({40}, DType::F32);
  ops::rmsnorm_backward(inplace, x, w, rstd, inplace, dw2, ops::GradWrite::Accumulate);
  CHECK(inplace.to_doubles() == dx.to_doubles());
  CHECK(dw2.to_doubles() == dw.to_doubles());

  // dx may alias the residual too: dx = gradient + residual, in place.
  const Tensor residual = randn({6, 40}, 4);
  Tensor summed = residual.clone(), dw3 = Tensor::zeros({40}, DType::F32);
  ops::rmsnorm_backward(dy, x, w, rstd, summed, dw3, ops::GradWrite::Accumulate, summed);
  const auto expected = plus(dx.to_doubles(), residual.to_doubles());
  const auto got = summed.to_doubles();
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == float(expected[i]));
}

TEST_CASE("rmsnorm rejects bad arguments with clear errors", "[ops]") {
  const Tensor x = randn({4, 8}, 1), w = randn({8}, 2);
  Tensor y = Tensor::empty({4, 8}, DType::F32), rstd = Tensor::empty({4}, DType::F32);
  CHECK_THROWS_WITH(ops::rmsnorm_forward(randn({2, 4, 8}, 1), w, kEps, y, rstd),
                    Catch::Contains("rmsnorm_forward: x must be [N, C], got f32[2, 4, 8]"));
  CHECK_THROWS_WITH(ops::rmsnorm_forward(x, randn({7}, 2), kEps, y, rstd),
                    Catch::Contains("rmsnorm_forward: w must have shape [8], got f32[7]"));
  Tensor y_bf16 = Tensor::empty({4, 8}, DType::BF16);
  CHECK_THROWS_WITH(ops::rmsnorm_forward(x, w, kEps, y_bf16, rstd), Catch::Contains("rmsnorm_forward: y must be f32, got bf16[4, 8]"));
  Tensor rstd_bad = Tensor::empty({5}, DType::F32);
  CHECK_THROWS_WITH(ops::rmsnorm_forward(x, w, kEps, y, rstd_bad), Catch::Contains("rstd must have shape [4]"));
  CHECK_THROWS_WITH(ops::rmsnorm_forward(randn({4, 8}, 1, DType::BF16), randn({8}, 2, DType::BF16), kEps, y, rstd),
                    Catch::Contains("y must be bf16"));
  Tensor dx = Tensor::empty({4, 8}, DType::F32), dw_bf16 = Tensor::zeros({8}, DType::BF16);
  CHECK_THROWS_WITH(ops::rmsnorm_backward(x, x, w, rstd, dx, dw_bf16, ops::GradWrite::Accumulate),
                    Catch::Contains("rmsnorm_backward: dw must be f32"));
}

TEST_CASE("rmsnorm on CUDA matches the CPU within the tolerance rule", "[ops][cuda]") {
  uint64_t seed = 900;
  // Each launch shape: a warp per row with 4, 6 and 8 packs per thread (9000 rows: several rows
  // per warp, so the weight gradient sums across rows), a block of 128 and of 256 threads per
  // row, and the scalar path (C not a multiple of 8). A second run must give the same bits (the
  // weight gradient's partials are added in a fixed order). Every shape runs each dtype pair
  // with and without the residual, and each write mode with and without it: the weight gradient
  // is overwritten (starting from NaN) or added to.
  struct Variant {
    DType x, w;
    bool residual;
    ops::GradWrite write;
  };
  const Variant variants[] = {{DType::F32, DType::F32, false, ops::GradWrite::Accumulate},
                              {DType::F32, DType::F32, true, ops::GradWrite::Overwrite},
                              {DType::BF16, DType::BF16, false, ops::GradWrite::Overwrite},
                              {DType::BF16, DType::BF16, true, ops::GradWrite::Accumulate},
                              {DType::BF16, DType::F32, true, ops::GradWrite::Overwrite},
                              {DType::BF16, DType::F32, false, ops::GradWrite::Accumulate}};
  const int64_t shapes[][2] = {{37, 520}, {9000, 896}, {64, 1536}, {50, 2048}, {40, 3584}, {6, 20000}, {5, 100}};
  for (const auto& [N, C] : shapes) {
    for (const Variant& v : variants) {
      CAPTURE(N, C, dtype_name(v.x), dtype_name(v.w), v.residual, v.write == ops::GradWrite::Overwrite);
      const Tensor x = randn({N, C}, seed++, v.x), w = randn({C}, seed++, v.w), dy = randn({N, C}, seed++, v.x);
      const Tensor dw0 = randn({C}, seed++);
      const Tensor residual = v.residual ? randn({N, C}, seed++, v.x) : Tensor();
      const Run gpu = run_rmsnorm(x, w, dy, dw0, Device::cuda(0), residual, v.write);
      const Run cpu = run_rmsnorm(x, w, dy, dw0, Device::cpu(), residual, v.write);
      const Run gpu_again = run_rmsnorm(x, w, dy, dw0, Device::cuda(0), residual, v.write);
      CHECK(gpu_again.dw == gpu.dw);
      CHECK(gpu_again.dx == gpu.dx);
      const auto xv = x.to_doubles(), wv = w.to_doubles(), dyv = dy.to_doubles();
      std::vector<double> rstd_ref, dx_ref, dw_ref;
      const auto y_ref = forward_ref<double>(xv, wv, N, C, &rstd_ref);
      backward_ref<double>(dyv, xv, wv, N, C, dx_ref, dw_ref);
      if (v.residual) dx_ref = plus(dx_ref, residual.to_doubles());
      check_rule(gpu.y, cpu.y, y_ref);
      check_rule(gpu.rstd, cpu.rstd, rstd_ref);
      check_rule(gpu.dx, cpu.dx, dx_ref);
      check_rule(gpu.dw, cpu.dw, v.write == ops::GradWrite::Overwrite ? dw_ref : plus(dw0.to_doubles(), dw_ref));
    }
  }
  // No rows: the weight gradient is an empty sum (zeros when overwritten, unchanged when added to).
  for (Device device : {Device::cpu(), Device::cuda(0)}) {
    const Tensor none = Tensor::empty({0, 96}, DType::BF16), w = randn({96}, seed++, DType::BF16);
    const Tensor dw0 = randn({96}, seed++);
    CHECK(run_rmsnorm(none, w, none, dw0, device, Tensor(), ops::GradWrite::Overwrite).dw ==
          std::vector<double>(96, 0.0));
    CHECK(run_rmsnorm(none, w, none, dw0, device).dw == dw0.to_doubles());
  }
}
