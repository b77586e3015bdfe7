#pragma once
// Helpers shared by the op tests: random inputs, fp64 views of tensors, bf16 rounding of
// references, central finite differences, and the CUDA-vs-CPU comparison.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <vector>

#include "lrsa/core/tensor.h"
#include "support/compare.h"

namespace lrsa::test {

// Normal(0, scale) values stored in `dtype`; distinct seeds give independent tensors.
inline Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32, float scale = 1.0f) {
  return Tensor::normal(shape, 20240601, seed, 0.0f, scale, dtype);
}

// What storing each value in `dtype` does to it (identity for f32 up to f32 rounding).
inline std::vector<double> round_to(const std::vector<double>& v, DType dtype) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = dtype == DType::BF16 ? double(round_bf16(float(v[i]))) : double(float(v[i]));
  return out;
}

// Gradient of the scalar f at x by central differences (f evaluated in fp64, so the truncation
// and rounding errors are ~1e-9 relative for smooth functions of O(1) values).
inline std::vector<double> finite_diff(const std::function<double(const std::vector<double>&)>& f,
                                       std::vector<double> x, double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double up = f(x);
    x[i] = x0 - h;
    const double down = f(x);
    x[i] = x0;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// max |ours - reference| <= tol * max(1, max |reference|), with the numbers in the report.
inline void check_close(const std::vector<double>& ours, const std::vector<double>& reference, double tol) {
  REQUIRE(ours.size() == reference.size());
  const double err = max_abs_diff(ours, reference), bound = tol * std::max(1.0, max_abs(reference));
  INFO("max abs error " << err << " allowed " << bound);
  CHECK(err <= bound);
}

// The FlashAttention rule with the numbers in the report.
inline void check_rule(const std::vector<double>& ours, const std::vector<double>& baseline,
                       const std::vector<double>& reference, double floor = 1e-5) {
  REQUIRE(ours.size() == reference.size());
  REQUIRE(baseline.size() == reference.size());
  INFO("ours max err " << max_abs_diff(ours, reference) << ", baseline max err " << max_abs_diff(baseline, reference)
                       << ", floor " << floor);
  CHECK(within_rule(ours, baseline, reference, floor));
}

}  // namespace lrsa::test
