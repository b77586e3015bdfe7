// LagKV selection (docs/lrsa-spec.md, "Selection"): the CPU implementation against the
// independent fp64 reference, exact ties, hand-worked cases of the documented formulas, the
// packed layout, errors, and the CUDA selection against the CPU one.
#include <catch2/catch.hpp>

#include <cmath>

#include "attn/attn_testing.h"

using namespace lrsa;
using namespace lrsa::attn;
using lrsa::test::Problem;

namespace {

LrsaParams params(int64_t sink, int64_t lag, double ratio, float lambda = 1.0f) {
  return test::lrsa_config(sink, lag, ratio, lambda).lrsa;
}

std::vector<int64_t> cpu_select(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& p) {
  return lrsa_select(k, v, layout, p).indices.to_ints();
}

// Overwrites row `dst` of head h of a CPU [T, H, D] tensor with row `src`.
void copy_row(Tensor& x, int64_t h, int64_t src, int64_t dst) {
  x.select(0, dst).select(0, h).copy_(x.select(0, src).select(0, h).clone());
}

// A [T, 1, 2] f32 tensor from rows of two channels.
Tensor rows2(const std::vector<std::pair<float, float>>& rows) {
  std::vector<float> values;
  for (auto [a, b] : rows) {
    values.push_back(a);
    values.push_back(b);
  }
  return Tensor::from_floats(values, {int64_t(rows.size()), 1, 2});
}

struct SelectCase {
  Problem problem;
  LrsaParams params;
};

const std::vector<SelectCase>& select_cases() {
  static const std::vector<SelectCase> cases = {
      {{{70}, 2, 1, 16, DType::F32, 11}, params(4, 8, 0.25)},
      {{{130}, 4, 2, 64, DType::F32, 12}, params(0, 12, 0.5)},
      {{{37, 100, 5, 64}, 4, 4, 16, DType::F32, 13}, params(3, 8, 0.375, 0.0f)},
      {{{90, 41}, 7, 7, 128, DType::F32, 14}, params(5, 10, 0.3, 2.5f)},
      {{{200}, 2, 2, 64, DType::BF16, 15}, params(16, 32, 0.25)},
      {{{77, 160}, 3, 3, 32, DType::BF16, 16}, params(2, 16, 0.5, 0.5f)},
      {{{300}, 1, 1, 2, DType::F32, 17}, params(1, 64, 0.1)},
  };
  return cases;
}

}  // namespace

TEST_CASE("selection matches the fp64 reference selection", "[attn]") {
  for (const SelectCase& c : select_cases()) {
    INFO(c.problem.str() << " S " << c.params.sink << " L " << c.params.lag << " K " << c.params.kept()
                         << " lambda " << c.params.score_v_ratio);
    const test::Inputs in = test::make_inputs(c.problem);
    const LrsaSelection sel = lrsa_select(in.k, in.v, in.layout, c.params);
    int64_t parts = 0;
    for (int64_t n : c.problem.lengths) parts += selectable_partitions(n, c.params);
    CHECK(sel.indices.dtype() == DType::I32);
    CHECK(sel.indices.shape() == Shape{c.problem.Hk, parts, c.params.kept()});
    CHECK(sel.num_parts() == parts);
    CHECK(sel.indices.to_ints() == lrsa_select_reference(in.k, in.v, in.layout, c.params));
  }
}

TEST_CASE("selection restarts at every document and is stored as absolute ascending rows", "[attn]") {
  const LrsaParams p = params(3, 8, 0.375);
  const Problem problem{{37, 100, 5, 64}, 2, 2, 16, DType::F32, 21};
  const test::Inputs in = test::make_inputs(problem);
  const LrsaSelection sel = lrsa_select(in.k, in.v, in.layout, p);
  CHECK(sel.part_offset == std::vector<int64_t>{0, 3, 14, 14, 20});
  const std::vector<int64_t> packed = sel.indices.to_ints();
  const int64_t K = p.kept(), P = sel.num_parts();
  for (size_t b = 0; b < problem.lengths.size(); ++b) {
    const int64_t s0 = in.layout.cu_seqlens[b], s1 = in.layout.cu_seqlens[b + 1];
    // The document on its own gives the same selection, shifted by its start.
    const LrsaSelection alone =
        lrsa_select(in.k.slice(0, s0, s1), in.v.slice(0, s0, s1), SeqLayout::single(s1 - s0), p);
    const std::vector<int64_t> own = alone.indices.to_ints();
    const int64_t n_parts = sel.part_offset[b + 1] - sel.part_offset[b];
    REQUIRE(alone.num_parts() == n_parts);
    for (int64_t h = 0; h < problem.Hk; ++h)
      for (int64_t part = 0; part < n_parts; ++part)
        for (int64_t i = 0; i < K; ++i) {
          const int64_t row = packed[size_t((h * P + sel.part_offset[b] + part) * K + i)];
          REQUIRE(row == s0 + own[size_t((h * n_parts + part) * K + i)]);
          REQUIRE(row >= s0 + p.sink + part * p.lag);
          REQUIRE(row < s0 + p.sink + (part + 1) * p.lag);
          if (i > 0) REQUIRE(row > packed[size_t((h * P + sel.part_offset[b] + part) * K + i - 1)]);
        }
  }
}

TEST_CASE("selection ties go to the lower position", "[attn]") {
  // Rows i and i + 8 of every partition are twins (same key and value), so every score comes
  // in pairs. With pairs ranked A > B > ...: K = 2 gives {A, A + 8}, K = 4 adds {B, B + 8}, and
  // K = 3 must break the tie inside pair B towards its lower row.
  for (DType dtype : {DType::F32, DType::BF16}) {
    INFO(dtype_name(dtype));
    const Problem problem{{3 + 16 * 5 + 7}, 2, 2, 32, dtype, 31};
    test::Inputs in = test::make_inputs(problem);
    for (int64_t first = 3; first + 16 <= problem.lengths[0]; first += 16)
      for (int64_t i = 0; i < 8; ++i)
        for (int64_t h = 0; h < 2; ++h) {
          copy_row(in.k, h, first + i, first + i + 8);
          copy_row(in.v, h, first + i, first + i + 8);
        }
    std::vector<std::vector<int64_t>> by_k;
    for (int64_t K = 1; K <= 4; ++K) {
      const LrsaParams p = params(3, 16, double(K) / 16);
      by_k.push_back(cpu_select(in.k, in.v, in.layout, p));
      CHECK(by_k.back() == lrsa_select_reference(in.k, in.v, in.layout, p));
    }
    const int64_t partitions = 2 * 4;  // heads x selectable partitions
    for (int64_t part = 0; part < partitions; ++part) {
      const int64_t* two = &by_k[1][size_t(part * 2)];
      const int64_t* four = &by_k[3][size_t(part * 4)];
      const int64_t a = two[0];
      REQUIRE(two[1] == a + 8);  // pair A, both rows
      REQUIRE(by_k[0][size_t(part)] == a);  // K = 1: the lower twin of A
      int64_t b = -1;
      for (int64_t i = 0; i < 4; ++i)
        if (four[i] != a && four[i] != a + 8 && b < 0) b = four[i];
      const std::vector<int64_t> three(by_k[2].begin() + part * 3, by_k[2].begin() + part * 3 + 3);
      std::vector<int64_t> expected{a, a + 8, b};
      std::sort(expected.begin(), expected.end());
      CHECK(three == expected);
    }
  }

  // A partition of identical rows: every score ties, so Sel = its first K rows.
  const LrsaParams p = params(0, 8, 0.5);
  const Problem problem{{32}, 1, 1, 16, DType::F32, 32};
  test::Inputs in = test::make_inputs(problem);
  for (int64_t j = 1; j < 8; ++j) {
    copy_row(in.k, 0, 0, j);
    copy_row(in.v, 0, 0, j);
  }
  const std::vector<int64_t> sel = cpu_select(in.k, in.v, in.layout, p);
  CHECK(std::vector<int64_t>(sel.begin(), sel.begin() + 4) == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(sel == lrsa_select_reference(in.k, in.v, in.layout, p));
}

TEST_CASE("selection with lambda = 0 ignores values: equal keys tie whatever the values", "[attn]") {
  const Problem problem{{48}, 1, 1, 16, DType::F32, 41};
  test::Inputs in = test::make_inputs(problem);
  const int64_t top = cpu_select(in.k, in.v, in.layout, params(0, 16, 1.0 / 16, 0.0f))[0];
  const std::vector<int64_t> two = cpu_select(in.k, in.v, in.layout, params(0, 16, 2.0 / 16, 0.0f));
  const int64_t second = two[0] == top ? two[1] : two[0];
  // Give the lowest other row of partition 0 the key of the runner-up, values untouched: the
  // key scores tie, the values must not matter, and the lower of the two rows wins.
  int64_t other = 0;
  while (other == top || other == second) ++other;
  copy_row(in.k, 0, second, other);
  std::vector<int64_t> expected{top, std::min(other, second)};
  std::sort(expected.begin(), expected.end());
  const LrsaParams p = params(0, 16, 2.0 / 16, 0.0f);
  const std::vector<int64_t> after = cpu_select(in.k, in.v, in.layout, p);
  CHECK(std::vector<int64_t>(after.begin(), after.begin() + 2) == expected);
  CHECK(after == lrsa_select_reference(in.k, in.v, in.layout, p));
  const LrsaParams p1 = params(0, 16, 2.0 / 16, 1.0f);  // values count again
  CHECK(cpu_select(in.k, in.v, in.layout, p1) == lrsa_select_reference(in.k, in.v, in.layout, p1));
}

TEST_CASE("selection follows the documented formulas on hand-worked cases", "[attn]") {
  // d = 2, L = 2, K = 1, S = 0: partition 0 = rows 0 (a) and 1 (b), reference = rows 2 and 3
  // with ranges [0, 1] in both channels, so z = the raw values.
  //   keys   a = (0, 4 sqrt 2), b = (0, 0)          -> s_K(a) - s_K(b) = 4 (Bessel: |x1 - x0| / sqrt 2)
  //   values a = (0, 0), b = (0, 1.2 sqrt 2)        -> s_V(a) - s_V(b) = -1.2
  // For two rows softmax gives score(a) - score(b) = tanh(dK / 2) + lambda tanh(dV / 2):
  //   lambda = 1: tanh 2 - tanh 0.6 = 0.43 > 0 -> a;   lambda = 2: 0.964 - 2 * 0.537 = -0.11 -> b.
  // Without Bessel (d instead of d - 1) the lambda = 2 case flips to a (0.888 - 2 * 0.400 > 0),
  // and without the softmax too (4 - 2 * 1.2 > 0).
  const float x = 4.0f * std::sqrt(2.0f), y = 1.2f * std::sqrt(2.0f);
  const Tensor k = rows2({{0, x}, {0, 0}, {0, 0}, {1, 1}});
  const Tensor v = rows2({{0, 0}, {0, y}, {0, 0}, {1, 1}});
  const SeqLayout layout = SeqLayout::single(4);
  CHECK(cpu_select(k, v, layout, params(0, 2, 0.5, 1.0f)) == std::vector<int64_t>{0});
  CHECK(cpu_select(k, v, layout, params(0, 2, 0.5, 2.0f)) == std::vector<int64_t>{1});
  CHECK(cpu_select(k, v, layout, params(0, 2, 0.5, 0.0f)) == std::vector<int64_t>{0});
  CHECK(cpu_select(v, k, layout, params(0, 2, 0.5, 2.0f)) == std::vector<int64_t>{0});  // roles swapped
  CHECK(lrsa_select_reference(k, v, layout, params(0, 2, 0.5, 2.0f)) == std::vector<int64_t>{1});

  // A constant channel in the reference partition divides by 1e-6 (no NaN): rows 3 and 6 leave
  // that constant by 1e-3, so their z spans 1e3 and they are the K = 2 selected.
  {
    const Problem problem{{1 + 16}, 1, 1, 8, DType::F32, 51};
    test::Inputs in = test::make_inputs(problem);
    float* kd = in.k.data_as<float>();
    for (int64_t j = 1; j < 17; ++j) kd[j * 8] = 0.5f;  // channel 0 of partitions 0 and 1
    kd[(1 + 3) * 8] = 0.501f;
    kd[(1 + 6) * 8] = 0.501f;
    const LrsaParams p = params(1, 8, 0.25, 0.0f);  // keys only: the values cannot compete
    CHECK(cpu_select(in.k, in.v, in.layout, p) == std::vector<int64_t>{1 + 3, 1 + 6});
    CHECK(lrsa_select_reference(in.k, in.v, in.layout, p) == std::vector<int64_t>{1 + 3, 1 + 6});
  }

  // Per-channel normalization: scaling a channel by a power of two (exact in floating point)
  // in every row leaves every selection bit-identical; partition p + 2 does not enter Sel(p).
  {
    const LrsaParams p = params(3, 12, 0.25);
    const Problem problem{{3 + 12 * 5 + 4}, 1, 2, 16, DType::F32, 52};
    test::Inputs in = test::make_inputs(problem);
    const std::vector<int64_t> before = cpu_select(in.k, in.v, in.layout, p);
    for (int64_t t = 0; t < in.k.size(0); ++t)
      for (int64_t h = 0; h < 2; ++h) {
        in.k.data_as<float>()[(t * 2 + h) * 16 + 5] *= 64.0f;
        in.v.data_as<float>()[(t * 2 + h) * 16 + 9] *= 0.125f;
      }
    CHECK(cpu_select(in.k, in.v, in.layout, p) == before);
    // Rewrite partition 3 (rows 39 .. 50): Sel(0) and Sel(1) stay, Sel(2) (its reference) moves.
    Tensor noise = Tensor::normal({12, 2, 16}, 99, 0, 0.0f, 3.0f);
    in.k.slice(0, 39, 51).copy_(noise);
    const std::vector<int64_t> after = cpu_select(in.k, in.v, in.layout, p);
    const int64_t P = 4, K = 3;
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 2 * K; ++i) CHECK(after[size_t(h * P * K + i)] == before[size_t(h * P * K + i)]);
    CHECK(after == lrsa_select_reference(in.k, in.v, in.layout, p));
  }
}

TEST_CASE("selection of short documents and invalid arguments", "[attn]") {
  const LrsaParams p = params(4, 8, 0.5);
  const Problem problem{{19, 12}, 1, 1, 16, DType::F32, 61};  // both shorter than S + 2L = 20
  const test::Inputs in = test::make_inputs(problem);
  const LrsaSelection sel = lrsa_select(in.k, in.v, in.layout, p);
  CHECK(sel.num_parts() == 0);
  CHECK(sel.indices.shape() == Shape{1, 0, 4});
  CHECK(sel.part_offset == std::vector<int64_t>{0, 0, 0});

  CHECK_THROWS_WITH(lrsa_select(in.k, in.v, in.layout, params(4, 8, 0.1)),
                    Catch::Contains("attention.ratio: ratio * lag = 0.1 * 8 gives K = 0"));
  CHECK_THROWS_WITH(lrsa_select(in.k, in.v, SeqLayout::single(30), p),
                    Catch::Contains("lrsa_select: layout.cu_seqlens ends at 30 but the tensors hold 31 tokens"));
  CHECK_THROWS_WITH(lrsa_select(in.k, in.v.to(DType::BF16), in.layout, p),
                    Catch::Contains("lrsa_select: v must be f32 like q/k/v, got bf16[31, 1, 16]"));
  CHECK_THROWS_WITH(lrsa_select(in.k, in.v.slice(0, 0, 30), in.layout, p),
                    Catch::Contains("lrsa_select: v must have shape [31, 1, 16]"));
  CHECK_THROWS_WITH(lrsa_select(in.k.to(DType::I32), in.v, in.layout, p),
                    Catch::Contains("lrsa_select: k must be f32 or bf16"));
  const Tensor one = Tensor::zeros({31, 1, 1}, DType::F32);
  CHECK_THROWS_WITH(lrsa_select(one, one, in.layout, p), Catch::Contains("head dimension 1 < 2"));
  const Tensor strided = Tensor::zeros({31, 16, 2}, DType::F32).transpose(1, 2);  // [31, 2, 16]
  CHECK_THROWS_WITH(lrsa_select(strided, strided, in.layout, p),
                    Catch::Contains("lrsa_select: k must have its last two dimensions contiguous"));
}

namespace {

// The CUDA selection of (k, v) on the GPU equals the CPU selection of the same values.
void check_cuda_selection(const Tensor& k_cpu, const Tensor& v_cpu, const Tensor& k_gpu, const Tensor& v_gpu,
                          const std::vector<int64_t>& lengths, const LrsaParams& p) {
  INFO("S " << p.sink << " L " << p.lag << " K " << p.kept() << " lambda " << p.score_v_ratio);
  const LrsaSelection expected = lrsa_select(k_cpu, v_cpu, SeqLayout::from_lengths(lengths), p);
  const LrsaSelection got = lrsa_select(k_gpu, v_gpu, SeqLayout::from_lengths(lengths, Device::cuda(0)), p);
  CHECK(got.indices.device() == Device::cuda(0));
  CHECK(got.part_offset == expected.part_offset);
  CHECK(got.indices.shape() == expected.indices.shape());
  CHECK(got.indices.to_ints() == expected.indices.to_ints());
}

}  // namespace

TEST_CASE("CUDA selection equals the CPU selection", "[attn][cuda]") {
  // 16-byte packs (d 64/128, bf16 and f32) and single elements (d 20); L a power of two or not
  // (the sort pads 192 rows to a block of 1024, 3000 to 4096); the 0.5B shape at L = 1024; L past a
  // block (2048, 3000: two and four rows per thread in the softmax's sum and the sort).
  const std::vector<std::pair<Problem, LrsaParams>> cases = {
      {{{1000}, 4, 2, 64, DType::BF16, 71}, params(16, 128, 0.25)},
      {{{700, 333, 900}, 8, 8, 128, DType::BF16, 72}, params(5, 128, 0.5, 0.5f)},
      {{{1500}, 2, 1, 64, DType::F32, 73}, params(0, 256, 0.125)},
      {{{600}, 4, 4, 128, DType::F32, 74}, params(3, 128, 1.0, 0.0f)},
      {{{2100, 450}, 2, 2, 20, DType::BF16, 75}, params(7, 192, 0.3)},
      {{{5000}, 14, 2, 64, DType::BF16, 76}, params(16, 1024, 0.25)},
      {{{7000}, 2, 1, 64, DType::BF16, 77}, params(8, 2048, 0.25)},
      {{{9100, 200}, 2, 2, 64, DType::F32, 78}, params(4, 3000, 0.1)},
  };
  for (const auto& [problem, p] : cases) {
    INFO(problem.str());
    const test::Inputs cpu = test::make_inputs(problem);
    const test::Inputs gpu = test::make_inputs(problem, Device::cuda(0));
    check_cuda_selection(cpu.k, cpu.v, gpu.k, gpu.v, problem.lengths, p);
  }
}

TEST_CASE("CUDA selection refuses a lag past its sort's rows", "[attn][cuda]") {
  const test::Inputs gpu = test::make_inputs({{16500}, 2, 1, 64, DType::BF16, 79}, Device::cuda(0));
  CHECK_THROWS_WITH(lrsa_select(gpu.k, gpu.v, SeqLayout::from_lengths({16500}, Device::cuda(0)), params(0, 8200, 0.25)),
                    Catch::Contains("lag 8200 exceeds the selection kernels' 8192"));
}

TEST_CASE("CUDA selection: views into a fused QKV buffer, and ties", "[attn][cuda]") {
  const LrsaParams p = params(4, 64, 0.25);
  const std::vector<int64_t> lengths{4 + 64 * 6 + 9};
  const int64_t T = lengths[0], Hk = 2, D = 64;
  for (DType dtype : {DType::BF16, DType::F32}) {
    INFO(dtype_name(dtype));
    // k and v as head ranges of one [T, 3 Hk, D] buffer (row stride 3 Hk D), as the decoder's.
    const Tensor fused = Tensor::normal({T, 3 * Hk, D}, 81, 1, 0.0f, 1.0f, dtype);
    const Tensor fused_gpu = fused.to(Device::cuda(0));
    check_cuda_selection(fused.slice(1, Hk, 2 * Hk), fused.slice(1, 2 * Hk, 3 * Hk), fused_gpu.slice(1, Hk, 2 * Hk),
                         fused_gpu.slice(1, 2 * Hk, 3 * Hk), lengths, p);
    // Rows i and i + 32 of every partition are twins: every score ties with another, and the
    // lower row must win each tie on the GPU as on the CPU.
    Tensor k = Tensor::normal({T, Hk, D}, 82, 2, 0.0f, 1.0f, dtype);
    Tensor v = Tensor::normal({T, Hk, D}, 82, 3, 0.0f, 1.0f, dtype);
    for (int64_t first = p.sink; first + 64 <= T; first += 64)
      for (int64_t i = 0; i < 32; ++i)
        for (int64_t h = 0; h < Hk; ++h) {
          copy_row(k, h, first + i, first + i + 32);
          copy_row(v, h, first + i, first + i + 32);
        }
    for (double ratio : {1.0 / 64, 3.0 / 64, 0.25}) {
      const LrsaParams tied = params(p.sink, 64, ratio);
      check_cuda_selection(k, v, k.to(Device::cuda(0)), v.to(Device::cuda(0)), lengths, tied);
      CHECK(lrsa_select(k, v, SeqLayout::from_lengths(lengths), tied).indices.to_ints() ==
            lrsa_select_reference(k, v, SeqLayout::from_lengths(lengths), tied));
    }
  }
}
