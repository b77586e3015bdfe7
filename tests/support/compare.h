#pragma once
// Error measures for tests. FlashAttention's rule: an implementation's error against a
// high-precision reference must be at most 2x (plus a small floor) the error of a
// straightforward implementation in the same storage precision.
#include <cmath>
#include <cstddef>
#include <vector>

namespace lrsa::test {

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = d > m ? d : m;
  }
  return m;
}

// ||a - b|| / ||b||
inline double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num) / (std::sqrt(den) + 1e-30);
}

// True when `ours` is within twice the error of `baseline` against `reference` (+ floor).
inline bool within_rule(const std::vector<double>& ours, const std::vector<double>& baseline,
                        const std::vector<double>& reference, double floor = 1e-5) {
  return max_abs_diff(ours, reference) <= 2.0 * max_abs_diff(baseline, reference) + floor;
}

}  // namespace lrsa::test
