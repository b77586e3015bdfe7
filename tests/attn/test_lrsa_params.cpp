// LRSA parameters, document layout and the visibility rule (docs/lrsa-spec.md, "Parameters",
// "Partitions", "Visibility" and its listed consequences).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <set>

#include "attn/attn_testing.h"
#include "lrsa/core/rng.h"

using namespace lrsa;
using namespace lrsa::attn;

namespace {

LrsaParams params(int64_t sink, int64_t lag, double ratio, float lambda = 1.0f) {
  LrsaParams p;
  p.sink = sink;
  p.lag = lag;
  p.ratio = ratio;
  p.score_v_ratio = lambda;
  return p;
}

// A random Sel(p) of K rows for every partition of a document of n tokens: selected[j].
std::vector<char> random_selection(int64_t n, const LrsaParams& p, uint64_t seed) {
  std::vector<char> selected(size_t(n), 0);
  const int64_t K = p.kept();
  for (int64_t part = 0; p.sink + (part + 1) * p.lag <= n; ++part) {
    std::set<int64_t> rows;
    for (uint64_t draw = 0; int64_t(rows.size()) < K; ++draw)
      rows.insert(int64_t(philox_uniform(seed, uint64_t(part), draw) * float(p.lag)));
    for (int64_t r : rows) selected[size_t(p.sink + part * p.lag + r)] = 1;
  }
  return selected;
}

}  // namespace

TEST_CASE("kept tokens per partition are floor(r * L)", "[attn]") {
  CHECK(params(16, 1024, 0.25).kept() == 256);
  CHECK(params(0, 7, 1.0).kept() == 7);
  CHECK(params(0, 10, 0.35).kept() == 3);
  // 0.29 * 100 is 28.999999999999996 in binary; the user wrote 29.
  CHECK(params(0, 100, 0.29).kept() == 29);
  CHECK(params(0, 3, 0.5).kept() == 1);
}

TEST_CASE("invalid LRSA parameters are rejected with the field and the numbers", "[attn]") {
  CHECK_NOTHROW(params(0, 1, 1.0).validate());
  CHECK_THROWS_WITH(params(16, 4, 0.1).validate(),
                    Catch::Contains("attention.ratio: ratio * lag = 0.1 * 4 gives K = 0 kept tokens per partition; "
                                    "K must be >= 1"));
  CHECK_THROWS_WITH(params(16, 0, 0.5).validate(), Catch::Contains("attention.lag: must be >= 1, got 0"));
  CHECK_THROWS_WITH(params(-1, 8, 0.5).validate(), Catch::Contains("attention.sink: must be >= 0, got -1"));
  CHECK_THROWS_WITH(params(0, 8, 0.0).validate(), Catch::Contains("attention.ratio: must be in (0, 1], got 0"));
  CHECK_THROWS_WITH(params(0, 8, 1.5).validate(), Catch::Contains("attention.ratio: must be in (0, 1], got 1.5"));
  CHECK_THROWS_WITH(params(0, 8, std::nan("")).validate(), Catch::Contains("attention.ratio: must be in (0, 1]"));
  CHECK_THROWS_WITH(params(0, 8, 0.5, std::numeric_limits<float>::infinity()).validate(),
                    Catch::Contains("attention.score_v_ratio: must be finite"));
}

TEST_CASE("selectable partitions are those whose successor is complete", "[attn]") {
  const LrsaParams p = params(3, 10, 0.5);
  CHECK(selectable_partitions(0, p) == 0);
  CHECK(selectable_partitions(2, p) == 0);
  CHECK(selectable_partitions(22, p) == 0);  // S + 2L - 1
  CHECK(selectable_partitions(23, p) == 1);  // S + 2L: partition 1 complete, so 0 is selectable
  CHECK(selectable_partitions(32, p) == 1);
  CHECK(selectable_partitions(33, p) == 2);
  CHECK(selectable_partitions(3 + 50 + 7, p) == 4);
  CHECK(selectable_partitions(40, params(0, 8, 0.5)) == 4);
}

TEST_CASE("sequence layouts: helpers and validation of cu_seqlens", "[attn]") {
  const SeqLayout layout = SeqLayout::from_lengths({3, 5, 1});
  CHECK(layout.cu_seqlens == std::vector<int64_t>{0, 3, 8, 9});
  CHECK(layout.total() == 9);
  CHECK(layout.max_seqlen() == 5);
  CHECK_FALSE(layout.cu_seqlens_device.defined());
  CHECK_NOTHROW(layout.validate("op", 9, Device::cpu()));
  CHECK(SeqLayout::single(7).cu_seqlens == std::vector<int64_t>{0, 7});

  CHECK_THROWS_WITH(SeqLayout::from_lengths({3, 0}), Catch::Contains("document 1 has length 0"));
  CHECK_THROWS_WITH(SeqLayout::from_lengths({}), Catch::Contains("no documents"));
  CHECK_THROWS_WITH(layout.validate("op", 10, Device::cpu()),
                    Catch::Contains("op: layout.cu_seqlens ends at 9 but the tensors hold 10 tokens"));
  SeqLayout bad;
  bad.cu_seqlens = {1, 4};
  CHECK_THROWS_WITH(bad.validate("op", 4, Device::cpu()), Catch::Contains("must start at 0, got 1"));
  bad.cu_seqlens = {0, 4, 4, 6};
  CHECK_THROWS_WITH(bad.validate("op", 6, Device::cpu()),
                    Catch::Contains("strictly increasing, got cu_seqlens[2] = 4 after 4"));
  bad.cu_seqlens = {0};
  CHECK_THROWS_WITH(bad.validate("op", 0, Device::cpu()), Catch::Contains("at least one document"));
  // A GPU call needs the boundaries on the GPU too.
  CHECK_THROWS_WITH(layout.validate("op", 9, Device::cuda(0)),
                    Catch::Contains("layout.cu_seqlens_device must be a contiguous i32[4] on cuda:0, got undefined"));
}

TEST_CASE("visibility: plain causal before S + 2L, for r = 1, and for queries inside the sink", "[attn]") {
  for (const LrsaParams& p : {params(4, 8, 0.25), params(0, 5, 0.4), params(7, 3, 1.0 / 3)}) {
    const int64_t n = p.sink + 9 * p.lag + 2;
    const std::vector<char> sel = random_selection(n, p, 7);
    auto selected = [&](int64_t j) { return sel[size_t(j)] != 0; };
    for (int64_t t = 0; t < std::min(n, p.sink + 2 * p.lag); ++t)
      for (int64_t j = 0; j < n; ++j) REQUIRE(lrsa_visible(t, j, p, selected) == (j <= t));
    // Beyond S + 2L some key before the window is hidden (K < L here).
    int64_t hidden = 0;
    for (int64_t t = p.sink + 2 * p.lag; t < n; ++t)
      for (int64_t j = 0; j <= t; ++j) hidden += lrsa_visible(t, j, p, selected) ? 0 : 1;
    CHECK(hidden > 0);

    // r = 1: every row of every partition is selected and LRSA is dense causal.
    const LrsaParams full = params(p.sink, p.lag, 1.0);
    const std::vector<char> all = random_selection(n, full, 9);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < n; ++j)
        REQUIRE(lrsa_visible(t, j, full, [&](int64_t i) { return all[size_t(i)] != 0; }) == (j <= t));
  }
}

TEST_CASE("visibility: a query in partition q >= 1 sees S + K(q-1) + L + (t - S - qL + 1) keys", "[attn]") {
  for (const LrsaParams& p : {params(4, 8, 0.25), params(0, 6, 0.5), params(3, 10, 0.3), params(2, 1, 1.0)}) {
    const int64_t n = p.sink + 7 * p.lag + p.lag / 2 + 1, K = p.kept();
    const std::vector<char> sel = random_selection(n, p, 3);
    auto selected = [&](int64_t j) { return sel[size_t(j)] != 0; };
    for (int64_t t = p.sink + p.lag; t < n; ++t) {
      const int64_t q = (t - p.sink) / p.lag;
      int64_t count = 0;
      for (int64_t j = 0; j < n; ++j) count += lrsa_visible(t, j, p, selected) ? 1 : 0;
      REQUIRE(count == p.sink + K * (q - 1) + p.lag + (t - p.sink - q * p.lag + 1));
    }
  }
}
