#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>

#include "lrsa/ops/matmul.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

// One product C = alpha * op(A) @ op(B) + beta * C0 over batch dims `batch` (empty = 2-D); a
// shared operand is 2-D and used by every batch entry.
struct Problem {
  Shape batch;
  int64_t M, N, K;
  bool ta = false, tb = false;
  float alpha = 1.0f, beta = 0.0f;
  bool a_shared = false, b_shared = false;

  int64_t batch_count() const { return shape_numel(batch); }
  Shape with_batch(bool shared, Shape last2) const {
    Shape s = shared ? Shape{} : batch;
    s.insert(s.end(), last2.begin(), last2.end());
    return s;
  }
  Shape a_shape() const { return with_batch(a_shared, ta ? Shape{K, M} : Shape{M, K}); }
  Shape b_shape() const { return with_batch(b_shared, tb ? Shape{N, K} : Shape{K, N}); }
  Shape c_shape() const { return with_batch(false, {M, N}); }
  // Storage index of op(A)[batch e](i, k) and op(B)[e](k, j).
  int64_t a_index(int64_t e, int64_t i, int64_t k) const {
    return (a_shared ? 0 : e * M * K) + (ta ? k * M + i : i * K + k);
  }
  int64_t b_index(int64_t e, int64_t k, int64_t j) const {
    return (b_shared ? 0 : e * K * N) + (tb ? j * K + k : k * N + j);
  }
};

// The product accumulated in Acc in k order: double gives the reference, float the
// straightforward same-precision implementation (before rounding to C's dtype).
template <typename Acc>
std::vector<double> product(const Problem& p, const std::vector<double>& a, const std::vector<double>& b,
                            const std::vector<double>& c0) {
  std::vector<double> c(size_t(p.batch_count() * p.M * p.N));
  for (int64_t e = 0; e < p.batch_count(); ++e)
    for (int64_t i = 0; i < p.M; ++i)
      for (int64_t j = 0; j < p.N; ++j) {
        Acc acc = 0;
        for (int64_t k = 0; k < p.K; ++k) acc += Acc(a[size_t(p.a_index(e, i, k))]) * Acc(b[size_t(p.b_index(e, k, j))]);
        const size_t ci = size_t((e * p.M + i) * p.N + j);
        Acc out = Acc(p.alpha) * acc;
        if (p.beta != 0.0f) out += Acc(p.beta) * Acc(c0[ci]);
        c[ci] = double(out);
      }
  return c;
}

struct Outcome {
  std::vector<double> ours, baseline, reference;
};

Outcome run_matmul(const Problem& p, DType ab, DType c_dtype, uint64_t seed, Device device = Device::cpu()) {
  const Tensor a = randn(p.a_shape(), seed, ab), b = randn(p.b_shape(), seed + 1, ab);
  const Tensor c0 = randn(p.c_shape(), seed + 2, c_dtype);
  Tensor c = c0.to(device).clone();
  ops::matmul(a.to(device), b.to(device), c, p.ta, p.tb, p.alpha, p.beta);
  const auto av = a.to_doubles(), bv = b.to_doubles(), cv = c0.to_doubles();
  return {c.to_doubles(), round_to(product<float>(p, av, bv, cv), c_dtype), product<double>(p, av, bv, cv)};
}

std::vector<Problem> shape_grid() {
  std::vector<Problem> problems;
  // Odd sizes, K across the 256-deep slices, M across row blocks, N across 2048-column slabs.
  const int64_t sizes[][3] = {{1, 1, 1}, {5, 3, 7}, {13, 29, 17}, {67, 300, 35}, {130, 257, 20}, {7, 5, 2100}};
  for (const auto& s : sizes)
    for (int t = 0; t < 4; ++t)
      problems.push_back(Problem{{}, s[0], s[2], s[1], bool(t & 1), bool(t & 2), t == 3 ? 0.5f : 1.0f,
                                 t >= 2 ? 1.5f : 0.0f});
  return problems;
}

// ops::set_gemm_candidates(n) for a scope, 1 after it. With n > 1 the first use of a shape times
// cuBLASLt's candidates on the real operands, writing D (or a scratch buffer where D is also the
// C that an accumulation reads): the results must not show it.
struct GemmCandidatesScope {
  explicit GemmCandidatesScope(int n) { ops::set_gemm_candidates(n); }
  ~GemmCandidatesScope() { ops::set_gemm_candidates(1); }
};

}  // namespace

TEST_CASE("matmul f32 matches an fp64 reference: all transposes, odd shapes, alpha/beta", "[ops]") {
  uint64_t seed = 1;
  for (const Problem& p : shape_grid()) {
    CAPTURE(p.M, p.N, p.K, p.ta, p.tb, p.alpha, p.beta);
    const Outcome r = run_matmul(p, DType::F32, DType::F32, seed += 3);
    check_rule(r.ours, r.baseline, r.reference, 1e-5);
    check_close(r.ours, r.reference, 1e-5);
  }
  // K = 2500 narrows the column slabs to 1664, so N = 1700 takes two of them.
  for (bool tb : {false, true}) {
    const Outcome r = run_matmul(Problem{{}, 2, 1700, 2500, false, tb, 1.0f, 0.5f}, DType::F32, DType::F32, seed += 3);
    check_rule(r.ours, r.baseline, r.reference, 1e-5);
  }
}

TEST_CASE("matmul bf16 inputs and outputs follow the tolerance rule", "[ops]") {
  uint64_t seed = 100;
  for (const Problem& p : shape_grid()) {
    for (DType c_dtype : {DType::BF16, DType::F32}) {
      CAPTURE(p.M, p.N, p.K, p.ta, p.tb, p.alpha, p.beta, dtype_name(c_dtype));
      const Outcome r = run_matmul(p, DType::BF16, c_dtype, seed += 3);
      check_rule(r.ours, r.baseline, r.reference, 1e-5);
    }
  }
}

TEST_CASE("matmul batches: full batch, shared A or B, several batch dimensions", "[ops]") {
  uint64_t seed = 200;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    for (int shared = 0; shared < 3; ++shared) {
      Problem p{{2, 3}, 9, 11, 19, ta, tb, 1.0f, shared == 0 ? 0.0f : 0.5f, shared == 1, shared == 2};
      CAPTURE(ta, tb, shared);
      const Outcome r = run_matmul(p, DType::F32, DType::F32, seed += 3);
      check_close(r.ours, r.reference, 1e-5);
      const Outcome rb = run_matmul(p, DType::BF16, DType::BF16, seed += 3);
      check_rule(rb.ours, rb.baseline, rb.reference, 1e-5);
    }
  }
}

TEST_CASE("matmul with beta = 0 never reads C", "[ops]") {
  const Tensor a = randn({17, 9}, 1), b = randn({9, 23}, 2);
  for (DType c_dtype : {DType::F32, DType::BF16}) {
    Tensor c = Tensor::full({17, 23}, std::numeric_limits<double>::quiet_NaN(), c_dtype);
    ops::matmul(a, b, c);
    for (double v : c.to_doubles()) REQUIRE(std::isfinite(v));
  }
}

TEST_CASE("matmul_backward matches the fp64 gradient for every transpose and batch layout", "[ops]") {
  uint64_t seed = 300;
  for (int t = 0; t < 4; ++t) {
    for (int shared = 0; shared < 3; ++shared) {
      Problem p{shared == 0 ? Shape{} : Shape{3}, 7, 10, 13, bool(t & 1), bool(t & 2)};
      p.a_shared = shared == 1;
      p.b_shared = shared == 2;
      CAPTURE(p.ta, p.tb, shared);
      const Tensor a = randn(p.a_shape(), seed++), b = randn(p.b_shape(), seed++), dc = randn(p.c_shape(), seed++);
      const Tensor da0 = randn(p.a_shape(), seed++), db0 = randn(p.b_shape(), seed++);
      const float beta_a = 0.0f, beta_b = 1.0f;  // overwrite dA, accumulate into dB
      Tensor da = da0.clone(), db = db0.clone();
      ops::matmul_backward(dc, a, b, da, db, p.ta, p.tb, beta_a, beta_b);

      // dop(A)(i, k) = sum_j dC(i, j) op(B)(k, j); dop(B)(k, j) = sum_i op(A)(i, k) dC(i, j); stored
      // at the operand's own index (so transposes need no separate formula); shared operands sum.
      const auto av = a.to_doubles(), bv = b.to_doubles(), dcv = dc.to_doubles();
      auto da_ref = da0.to_doubles(), db_ref = db0.to_doubles();
      for (double& v : da_ref) v *= beta_a;
      for (double& v : db_ref) v *= beta_b;
      for (int64_t e = 0; e < p.batch_count(); ++e)
        for (int64_t i = 0; i < p.M; ++i)
          for (int64_t j = 0; j < p.N; ++j) {
            const double g = dcv[size_t((e * p.M + i) * p.N + j)];
            for (int64_t k = 0; k < p.K; ++k) {
              da_ref[size_t(p.a_index(e, i, k))] += g * bv[size_t(p.b_index(e, k, j))];
              db_ref[size_t(p.b_index(e, k, j))] += g * av[size_t(p.a_index(e, i, k))];
            }
          }
      check_close(da.to_doubles(), da_ref, 1e-5);
      check_close(db.to_doubles(), db_ref, 1e-5);
    }
  }
}

TEST_CASE("linear forward and backward: 3-D input, bias, dw/dbias accumulated or overwritten", "[ops]") {
  const int64_t B = 2, T = 5, in = 7, out = 6;
  const Tensor x = randn({B, T, in}, 1), w = randn({out, in}, 2), bias = randn({out}, 3), dy = randn({B, T, out}, 4);
  const Tensor dw0 = randn({out, in}, 5), db0 = randn({out}, 6);
  Tensor y = Tensor::empty({B, T, out}, DType::F32), dx = Tensor::empty({B, T, in}, DType::F32);
  Tensor dw = dw0.clone(), dbias = db0.clone();
  ops::linear_forward(x, w, bias, y);
  ops::linear_backward(dy, x, w, dx, dw, dbias, ops::GradWrite::Accumulate);

  const auto xv = x.to_doubles(), wv = w.to_doubles(), bv = bias.to_doubles(), dyv = dy.to_doubles();
  std::vector<double> y_ref(size_t(B * T * out)), dx_ref(size_t(B * T * in), 0.0);
  auto dw_ref = dw0.to_doubles(), db_ref = db0.to_doubles();
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = bv[size_t(o)];
      const double g = dyv[size_t(n * out + o)];
      for (int64_t i = 0; i < in; ++i) {
        s += xv[size_t(n * in + i)] * wv[size_t(o * in + i)];
        dx_ref[size_t(n * in + i)] += g * wv[size_t(o * in + i)];
        dw_ref[size_t(o * in + i)] += g * xv[size_t(n * in + i)];
      }
      y_ref[size_t(n * out + o)] = s;
      db_ref[size_t(o)] += g;
    }
  check_close(y.to_doubles(), y_ref, 1e-5);
  check_close(dx.to_doubles(), dx_ref, 1e-5);
  check_close(dw.to_doubles(), dw_ref, 1e-5);
  check_close(dbias.to_doubles(), db_ref, 1e-5);

  // Without bias and without dx/dbias.
  Tensor y2 = Tensor::empty({B, T, out}, DType::F32), none;
  ops::linear_forward(x, w, Tensor(), y2);
  auto y2_ref = y_ref;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t o = 0; o < out; ++o) y2_ref[size_t(n * out + o)] -= bv[size_t(o)];
  check_close(y2.to_doubles(), y2_ref, 1e-5);

  // With a residual: into another tensor, and in place (residual = y).
  const Tensor res = randn({B, T, out}, 7);
  auto y3_ref = y_ref;
  for (size_t i = 0; i < y3_ref.size(); ++i) y3_ref[i] += res.to_doubles()[i];
  Tensor y3 = Tensor::empty({B, T, out}, DType::F32), y4 = res.clone();
  ops::linear_forward(x, w, bias, y3, res);
  ops::linear_forward(x, w, bias, y4, y4);
  check_close(y3.to_doubles(), y3_ref, 1e-5);
  check_close(y4.to_doubles(), y3_ref, 1e-5);

  // Overwritten, without dx: from NaN, so the old values must not be read.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor dw2 = Tensor::full({out, in}, nan, DType::F32), db2 = Tensor::full({out}, nan, DType::F32);
  ops::linear_backward(dy, x, w, none, dw2, db2, ops::GradWrite::Overwrite);
  for (size_t i = 0; i < dw_ref.size(); ++i) dw_ref[i] -= dw0.to_doubles()[i];
  for (size_t i = 0; i < db_ref.size(); ++i) db_ref[i] -= db0.to_doubles()[i];
  check_close(dw2.to_doubles(), dw_ref, 1e-5);
  check_close(db2.to_doubles(), db_ref, 1e-5);
}

TEST_CASE("matmul rejects bad arguments with clear errors", "[ops]") {
  const Tensor a = randn({4, 5}, 1), b = randn({5, 6}, 2);
  Tensor c = Tensor::empty({4, 6}, DType::F32);
  CHECK_THROWS_WITH(ops::matmul(a, randn({5, 6}, 2, DType::BF16), c),
                    Catch::Contains("matmul: b must be f32, got bf16[5, 6] cpu"));
  CHECK_THROWS_WITH(ops::matmul(a, randn({4, 6}, 2), c), Catch::Contains("matmul: shapes do not agree"));
  CHECK_THROWS_WITH(ops::matmul(a, b, c, true), Catch::Contains("trans_a=true"));
  CHECK_THROWS_WITH(ops::matmul(a.transpose(0, 1), b, c), Catch::Contains("matmul: a must be contiguous"));
  CHECK_THROWS_WITH(ops::matmul(Tensor::zeros({4, 5}, DType::I32), b, c), Catch::Contains("matmul: a must be f32 or bf16"));
  CHECK_THROWS_WITH(ops::matmul(Tensor(), b, c), Catch::Contains("matmul: a is undefined"));
  CHECK_THROWS_WITH(ops::matmul(a, b.view({30}), c), Catch::Contains(">= 2 dimensions"));
  Tensor c3 = Tensor::empty({2, 4, 6}, DType::F32);
  CHECK_THROWS_WITH(ops::matmul(randn({3, 4, 5}, 3), b, c3), Catch::Contains("batch dimensions of a f32[3, 4, 5]"));
  Tensor da = Tensor::empty({5, 4}, DType::F32), none;
  CHECK_THROWS_WITH(ops::matmul_backward(c, a, b, da, none), Catch::Contains("matmul_backward: da must have shape [4, 5]"));
  Tensor y = Tensor::empty({4, 3}, DType::F32);
  CHECK_THROWS_WITH(ops::linear_forward(a, randn({6, 5}, 4), Tensor(), y), Catch::Contains("linear_forward: y must have shape [4, 6]"));
  Tensor y6 = Tensor::empty({4, 6}, DType::F32);
  CHECK_THROWS_WITH(ops::linear_forward(a, randn({6, 5}, 4), randn({5}, 5), y6), Catch::Contains("linear_forward: bias must have shape [6]"));
  CHECK_THROWS_WITH(ops::linear_forward(a, randn({6, 5}, 4), Tensor(), y6, randn({6, 4}, 6)),
                    Catch::Contains("linear_forward: residual must have shape [4, 6]"));
  CHECK_THROWS_WITH(ops::linear_forward(Tensor::zeros({4, 0}, DType::F32), Tensor::zeros({6, 0}, DType::F32), Tensor(), y6),
                    Catch::Contains("with in > 0"));
}

TEST_CASE("linear forward rounds x @ W^T + bias + residual once", "[ops]") {
  // bf16 output: the f32 sum rounded once, not the product rounded and the residual added after.
  const Tensor x = randn({9, 16}, 11, DType::BF16), w = randn({12, 16}, 12, DType::BF16);
  const Tensor bias = randn({12}, 13, DType::BF16), res = randn({9, 12}, 14, DType::BF16);
  Tensor y = Tensor::empty({9, 12}, DType::BF16), y32 = Tensor::empty({9, 12}, DType::F32);
  ops::linear_forward(x, w, bias, y, res);
  ops::linear_forward(x.to(DType::F32), w.to(DType::F32), bias.to(DType::F32), y32, res.to(DType::F32));
  CHECK(y.to_doubles() == y32.to(DType::BF16).to_doubles());
}

TEST_CASE("the GEMM algorithm search takes 1 to 16 candidates", "[ops]") {
  CHECK_THROWS_WITH(ops::set_gemm_candidates(0), Catch::Contains("0 is not a number of algorithms from 1 to 16"));
  CHECK_THROWS_WITH(ops::set_gemm_candidates(17), Catch::Contains("17 is not a number of algorithms from 1 to 16"));
  const GemmCandidatesScope scope(4);
  if (std::getenv("LRSA_GEMM_CANDIDATES") == nullptr) CHECK(ops::gemm_candidates() == 4);
}

TEST_CASE("matmul on CUDA matches the CPU within the tolerance rule", "[ops][cuda]") {
  // With one algorithm (cuBLASLt's first) and with the fastest of 16 timed on the operands (the
  // products accumulate into C, beta = 0.5: the timing must not touch C).
  for (int candidates : {1, ops::kMaxGemmCandidates}) {
    const GemmCandidatesScope scope(candidates);
    uint64_t seed = 900;
    for (DType dtype : {DType::F32, DType::BF16}) {
      for (int t = 0; t < 4; ++t) {
        for (const Shape& batch : {Shape{}, Shape{3}}) {
          Problem p{batch, 67, 45, 129, bool(t & 1), bool(t & 2), 1.0f, 0.5f};
          CAPTURE(candidates, dtype_name(dtype), p.ta, p.tb, batch.size());
          const Outcome gpu = run_matmul(p, dtype, dtype, seed, Device::cuda(0));
          const Outcome cpu = run_matmul(p, dtype, dtype, seed);
          check_rule(gpu.ours, cpu.ours, cpu.reference, 1e-5);
          seed += 3;
        }
      }
    }
  }
}

TEST_CASE("linear backward on CUDA: dx, and dw and dbias accumulated or overwritten", "[ops][cuda]") {
  const Device gpu = Device::cuda(0);
  const int64_t rows = 333, in = 96, out = 40;
  const Tensor x = randn({rows, in}, 40, DType::BF16), w = randn({out, in}, 41, DType::BF16, 0.1f);
  const Tensor dy = randn({rows, out}, 42, DType::BF16), dw0 = randn({out, in}, 43), db0 = randn({out}, 44);
  const auto xv = x.to_doubles(), wv = w.to_doubles(), dyv = dy.to_doubles();
  for (ops::GradWrite write : {ops::GradWrite::Accumulate, ops::GradWrite::Overwrite}) {
    const bool accumulate = write == ops::GradWrite::Accumulate;
    CAPTURE(accumulate);
    auto dw_ref = accumulate ? dw0.to_doubles() : std::vector<double>(size_t(out * in), 0.0);
    auto db_ref = accumulate ? db0.to_doubles() : std::vector<double>(size_t(out), 0.0);
    std::vector<double> dx_ref(size_t(rows * in), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        const double g = dyv[size_t(r * out + o)];
        db_ref[size_t(o)] += g;
        for (int64_t i = 0; i < in; ++i) {
          dx_ref[size_t(r * in + i)] += g * wv[size_t(o * in + i)];
          dw_ref[size_t(o * in + i)] += g * xv[size_t(r * in + i)];
        }
      }
    // The old gradients: dw0/db0 to add to, or NaN that must not be read.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const Tensor dw_start = accumulate ? dw0 : Tensor::full({out, in}, nan, DType::F32);
    const Tensor db_start = accumulate ? db0 : Tensor::full({out}, nan, DType::F32);
    Tensor dx_cpu = Tensor::empty({rows, in}, DType::BF16), dw_cpu = dw_start.clone(), db_cpu = db_start.clone();
    Tensor dx_gpu = Tensor::empty({rows, in}, DType::BF16, gpu), dw_gpu = dw_start.to(gpu), db_gpu = db_start.to(gpu);
    ops::linear_backward(dy, x, w, dx_cpu, dw_cpu, db_cpu, write);
    ops::linear_backward(dy.to(gpu), x.to(gpu), w.to(gpu), dx_gpu, dw_gpu, db_gpu, write);
    check_rule(dx_gpu.to(Device::cpu()).to_doubles(), dx_cpu.to_doubles(), dx_ref, 1e-5);
    check_rule(dw_gpu.to(Device::cpu()).to_doubles(), dw_cpu.to_doubles(), dw_ref, 1e-5);
    check_rule(db_gpu.to(Device::cpu()).to_doubles(), db_cpu.to_doubles(), db_ref, 1e-5);
  }
}

TEST_CASE("linear forward on CUDA: bias and residual in the epilogue", "[ops][cuda]") {
  const Device gpu = Device::cuda(0);
  const int64_t rows = 70, in = 96, out = 40;
  const Tensor x = randn({rows, in}, 30, DType::BF16), w = randn({out, in}, 31, DType::BF16, 0.1f);
  const Tensor res = randn({rows, out}, 32, DType::BF16);
  // A bias at an address 2 bytes past an allocation: the epilogue needs 16-byte alignment.
  const Tensor bias_buf = randn({out + 1}, 33, DType::BF16);
  const Tensor bias = bias_buf.slice(0, 1, out + 1), bias_gpu = bias_buf.to(gpu).slice(0, 1, out + 1);
  struct Case {
    const char* name;
    DType inputs;
    bool with_bias, with_residual, in_place;
  };
  const std::vector<Case> cases = {Case{"bias", DType::BF16, true, false, false},
                                   Case{"residual", DType::BF16, false, true, false},
                                   Case{"bias + residual", DType::BF16, true, true, false},
                                   Case{"bias + residual in place", DType::BF16, true, true, true},
                                   Case{"f32 inputs, bias + residual", DType::F32, true, true, false}};
  const auto xv = x.to_doubles(), wv = w.to_doubles(), bv = bias.contiguous().to_doubles(), rv = res.to_doubles();
  for (int candidates : {1, ops::kMaxGemmCandidates}) {  // see the matmul test above
    const GemmCandidatesScope scope(candidates);
    for (const Case& k : cases) {
      CAPTURE(k.name, candidates);
      const Tensor xk = x.to(k.inputs), wk = w.to(k.inputs);
      const Tensor b_cpu = k.with_bias ? bias : Tensor(), b_gpu = k.with_bias ? bias_gpu : Tensor();
      Tensor y_cpu = k.in_place ? res.clone() : Tensor::empty({rows, out}, DType::BF16);
      Tensor y_gpu = k.in_place ? res.to(gpu) : Tensor::empty({rows, out}, DType::BF16, gpu);
      const Tensor r_gpu = res.to(gpu);
      ops::linear_forward(xk, wk, b_cpu, y_cpu, !k.with_residual ? Tensor() : k.in_place ? y_cpu : res);
      ops::linear_forward(xk.to(gpu), wk.to(gpu), b_gpu, y_gpu,
                          !k.with_residual ? Tensor() : k.in_place ? y_gpu : r_gpu);
      std::vector<double> ref(size_t(rows * out));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o) {
          double s = (k.with_bias ? bv[size_t(o)] : 0.0) + (k.with_residual ? rv[size_t(r * out + o)] : 0.0);
          for (int64_t i = 0; i < in; ++i) s += xv[size_t(r * in + i)] * wv[size_t(o * in + i)];
          ref[size_t(r * out + o)] = s;
        }
      check_rule(y_gpu.to(Device::cpu()).to_doubles(), y_cpu.to_doubles(), ref, 1e-5);
    }
  }
}
