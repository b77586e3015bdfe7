// Dense and LRSA attention, forward and backward: the CPU implementation against the naive fp64
// reference over many shapes (f32 tightly, bf16 by the FlashAttention 2x rule), the reference's
// backward against finite differences, the spec's consequences, determinism, views, errors,
// and the CUDA path against the reference with the CPU implementation as the baseline.
#include <catch2/catch.hpp>

#include <omp.h>

#include <cmath>

#include "attn/attn_testing.h"

using namespace lrsa;
using namespace lrsa::attn;
using lrsa::test::Inputs;
using lrsa::test::Outputs;
using lrsa::test::Problem;

namespace {

struct AttnCase {
  const char* what;
  Problem problem;
  AttentionConfig config;
};

AttentionConfig lrsa_cfg(int64_t sink, int64_t lag, double ratio, float lambda = 1.0f) {
  return test::lrsa_config(sink, lag, ratio, lambda);
}

std::string describe(const AttnCase& c) {
  const LrsaParams& p = c.config.lrsa;
  return c.config.mode == Mode::Dense
             ? fmt::format("{}: {} dense", c.what, c.problem.str())
             : fmt::format("{}: {} S {} L {} r {} (K {}) lambda {}", c.what, c.problem.str(), p.sink, p.lag, p.ratio,
                           p.kept(), p.score_v_ratio);
}

const std::vector<AttnCase>& cases() {
  static const std::vector<AttnCase> all = {
      {"T not a multiple of L", {{107}, 2, 1, 16, DType::F32, 101}, lrsa_cfg(4, 16, 0.25)},
      {"T < S + 2L", {{30}, 2, 2, 16, DType::F32, 102}, lrsa_cfg(4, 16, 0.25)},
      {"S = 0, L = 12", {{150}, 3, 3, 16, DType::F32, 103}, lrsa_cfg(0, 12, 0.5)},
      {"GQA 7", {{90}, 7, 1, 64, DType::F32, 104}, lrsa_cfg(3, 10, 0.3)},
      {"d 128, GQA 2", {{80}, 4, 2, 128, DType::F32, 105}, lrsa_cfg(2, 16, 0.25)},
      {"packed documents", {{37, 100, 5, 64}, 4, 2, 16, DType::F32, 106}, lrsa_cfg(4, 8, 0.5)},
      {"L larger than a tile", {{400}, 1, 1, 16, DType::F32, 107}, lrsa_cfg(5, 100, 0.1)},
      {"sink larger than a tile", {{230, 80}, 2, 1, 16, DType::F32, 108}, lrsa_cfg(70, 20, 0.25)},
      {"lambda 0", {{130}, 2, 1, 32, DType::F32, 109}, lrsa_cfg(3, 16, 0.25, 0.0f)},
      {"lambda 2.5", {{130}, 2, 1, 32, DType::F32, 109}, lrsa_cfg(3, 16, 0.25, 2.5f)},
      {"GQA 7 x 2 heads, d 64", {{200}, 14, 2, 64, DType::F32, 110}, lrsa_cfg(16, 32, 0.25)},
      {"dense packed", {{37, 100, 5, 150}, 4, 2, 16, DType::F32, 111}, test::dense_config()},
      {"dense GQA 7", {{70}, 7, 1, 64, DType::F32, 112}, test::dense_config()},
  };
  return all;
}

const std::vector<AttnCase>& bf16_cases() {
  static const std::vector<AttnCase> all = {
      {"bf16 T not a multiple of L", {{107}, 2, 1, 16, DType::BF16, 201}, lrsa_cfg(4, 16, 0.25)},
      {"bf16 packed", {{37, 100, 5, 64}, 4, 2, 64, DType::BF16, 202}, lrsa_cfg(4, 8, 0.5, 0.5f)},
      {"bf16 GQA 7, d 128", {{150}, 7, 1, 128, DType::BF16, 203}, lrsa_cfg(16, 32, 0.25)},
      {"bf16 dense", {{60, 90}, 2, 2, 64, DType::BF16, 204}, test::dense_config()},
  };
  return all;
}

Outputs reference(const AttnCase& c, const Inputs& in, ReferenceRounding rounding = ReferenceRounding::Exact) {
  return test::from_reference(attention_reference(c.config, in.q, in.k, in.v, in.layout, &in.dout, rounding));
}

void check_close(const Outputs& ours, const Outputs& ref, double tol) {
  CHECK(test::rel_max(ours.out, ref.out) < tol);
  CHECK(test::rel_max(ours.lse, ref.lse) < tol);
  CHECK(test::rel_max(ours.dq, ref.dq) < tol);
  CHECK(test::rel_max(ours.dk, ref.dk) < tol);
  CHECK(test::rel_max(ours.dv, ref.dv) < tol);
}

// FlashAttention's rule: ours within 2x the error of the baseline (+ a floor relative to the
// size of the reference).
void check_rule(const Outputs& ours, const Outputs& baseline, const Outputs& ref) {
  auto rule = [](const char* name, const std::vector<double>& a, const std::vector<double>& b,
                 const std::vector<double>& r) {
    double top = 0;
    for (double x : r) top = std::max(top, std::abs(x));
    INFO(name << ": ours " << test::max_abs_diff(a, r) << " baseline " << test::max_abs_diff(b, r) << " (max |ref| "
              << top << ")");
    CHECK(test::within_rule(a, b, r, 1e-5 * top));
  };
  rule("out", ours.out, baseline.out, ref.out);
  rule("lse", ours.lse, baseline.lse, ref.lse);
  rule("dq", ours.dq, baseline.dq, ref.dq);
  rule("dk", ours.dk, baseline.dk, ref.dk);
  rule("dv", ours.dv, baseline.dv, ref.dv);
}

double loss(const std::vector<double>& out, const std::vector<double>& dout) {
  double sum = 0;
  for (size_t i = 0; i < out.size(); ++i) sum += out[i] * dout[i];
  return sum;
}

}  // namespace

TEST_CASE("f32 forward and backward match the fp64 reference", "[attn]") {
  for (const AttnCase& c : cases()) {
    INFO(describe(c));
    const Inputs in = test::make_inputs(c.problem);
    const Outputs ours = test::run_attention(c.config, in);
    if (c.config.mode == Mode::Lrsa)
      REQUIRE(ours.selection == lrsa_select_reference(in.k, in.v, in.layout, c.config.lrsa));
    check_close(ours, reference(c, in), 2e-5);
  }
}

TEST_CASE("bf16 forward and backward follow the 2x rule against a naive bf16 implementation", "[attn]") {
  for (const AttnCase& c : bf16_cases()) {
    INFO(describe(c));
    const Inputs in = test::make_inputs(c.problem);
    const Outputs ours = test::run_attention(c.config, in);
    check_rule(ours, reference(c, in, ReferenceRounding::Bf16), reference(c, in));
  }
}

TEST_CASE("the reference backward matches finite differences of the reference forward", "[attn]") {
  const Problem problem{{40, 29}, 2, 1, 8, DType::F32, 301};
  for (const AttentionConfig& config : {test::dense_config(), lrsa_cfg(2, 6, 0.5)}) {
    INFO((config.mode == Mode::Dense ? "dense" : "lrsa"));
    Inputs in = test::make_inputs(problem);
    const ReferenceResult base = attention_reference(config, in.q, in.k, in.v, in.layout, &in.dout);
    const std::vector<double> dout = in.dout.to_doubles();
    const std::vector<int64_t> selection =
        config.mode == Mode::Lrsa ? lrsa_select_reference(in.k, in.v, in.layout, config.lrsa) : std::vector<int64_t>{};
    auto selection_unchanged = [&] {
      return selection.empty() || lrsa_select_reference(in.k, in.v, in.layout, config.lrsa) == selection;
    };
    int64_t checked = 0;
    for (int which = 0; which < 3; ++which) {
      Tensor& x = which == 0 ? in.q : which == 1 ? in.k : in.v;
      const std::vector<double>& grad = which == 0 ? base.dq : which == 1 ? base.dk : base.dv;
      float* data = x.data_as<float>();
      for (int64_t e = 3; e < x.numel(); e += x.numel() / 23) {
        const float x0 = data[e], h = 1.0f / 1024;
        data[e] = x0 + h;
        const double up = data[e] - double(x0);
        const ReferenceResult plus = attention_reference(config, in.q, in.k, in.v, in.layout);
        const bool same_plus = selection_unchanged();
        data[e] = x0 - h;
        const double down = double(x0) - data[e];
        const ReferenceResult minus = attention_reference(config, in.q, in.k, in.v, in.layout);
        const bool same_minus = selection_unchanged();
        data[e] = x0;
        if (!same_plus || !same_minus) continue;  // the step moved the selection: not differentiable here
        const double fd = (loss(plus.out, dout) - loss(minus.out, dout)) / (up + down);
        INFO("tensor " << which << " element " << e);
        CHECK(std::abs(fd - grad[size_t(e)]) < 1e-4 * (1 + std::abs(grad[size_t(e)])));
        ++checked;
      }
    }
    CHECK(checked >= 60);
  }
}

TEST_CASE("spec consequences: r = 1 is dense, and rows before S + 2L are plain causal", "[attn]") {
  const Problem problem{{37, 130}, 4, 2, 16, DType::F32, 401};
  const Inputs in = test::make_inputs(problem);
  const AttentionConfig dense = test::dense_config();
  const AttentionConfig full = lrsa_cfg(5, 12, 1.0);
  // The reference evaluates the same visible set, so it computes exactly the same numbers.
  const ReferenceResult ref_dense = attention_reference(dense, in.q, in.k, in.v, in.layout, &in.dout);
  const ReferenceResult ref_full = attention_reference(full, in.q, in.k, in.v, in.layout, &in.dout);
  CHECK(ref_full.out == ref_dense.out);
  CHECK(ref_full.dk == ref_dense.dk);
  // The CPU implementation visits the same keys (grouped into other tiles): equal to rounding.
  const Outputs cpu_dense = test::run_attention(dense, in);
  const Outputs cpu_full = test::run_attention(full, in);
  CHECK(test::rel_max(cpu_full.out, cpu_dense.out) < 1e-6);
  CHECK(test::rel_max(cpu_full.lse, cpu_dense.lse) < 1e-6);
  CHECK(test::rel_max(cpu_full.dq, cpu_dense.dq) < 1e-6);
  CHECK(test::rel_max(cpu_full.dk, cpu_dense.dk) < 1e-6);
  CHECK(test::rel_max(cpu_full.dv, cpu_dense.dv) < 1e-6);

  // K < L: identical to dense on the rows t < S + 2L of every document, different after.
  const AttentionConfig sparse = lrsa_cfg(5, 12, 0.25);
  const Outputs cpu_sparse = test::run_attention(sparse, in);
  const int64_t Hq = problem.Hq, D = problem.D, T = test::total_tokens(problem);
  int64_t differing = 0;
  for (size_t b = 0; b < problem.lengths.size(); ++b) {
    const int64_t s0 = in.layout.cu_seqlens[b];
    for (int64_t t = 0; t < problem.lengths[b]; ++t) {
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const double lse_sparse = cpu_sparse.lse[size_t(hq * T + s0 + t)];
        const double lse_dense = cpu_dense.lse[size_t(hq * T + s0 + t)];
        if (t < 5 + 2 * 12) {
          REQUIRE(std::abs(lse_sparse - lse_dense) < 1e-6);
          for (int64_t d = 0; d < D; ++d) {
            const size_t at = size_t(((s0 + t) * Hq + hq) * D + d);
            REQUIRE(std::abs(cpu_sparse.out[at] - cpu_dense.out[at]) < 1e-6);
          }
        } else {
          differing += lse_sparse < lse_dense - 1e-4 ? 1 : 0;  // fewer keys: a smaller log-sum-exp
        }
      }
    }
  }
  CHECK(differing == Hq * ((37 - 29) + (130 - 29)));  // every query from partition 2 on lost keys
}

TEST_CASE("backward is deterministic, also across thread counts", "[attn]") {
  const Problem problem{{150, 90}, 4, 2, 32, DType::F32, 501};
  const Inputs in = test::make_inputs(problem);
  const AttentionConfig config = lrsa_cfg(3, 16, 0.25);
  const Outputs first = test::run_attention(config, in);
  const Outputs second = test::run_attention(config, in);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Outputs serial = test::run_attention(config, in);
  omp_set_num_threads(threads);
  for (const Outputs* o : {&second, &serial}) {
    CHECK(o->out == first.out);
    CHECK(o->dq == first.dq);
    CHECK(o->dk == first.dk);
    CHECK(o->dv == first.dv);
  }
}

TEST_CASE("q/k/v and their gradients may be views into fused QKV buffers", "[attn]") {
  const int64_t T = 120, Hq = 4, Hk = 2, D = 16, H = Hq + 2 * Hk;
  const Tensor qkv = Tensor::normal({T, H, D}, 601, 0, 0.0f, 1.0f);
  Inputs in;
  in.q = qkv.slice(1, 0, Hq);
  in.k = qkv.slice(1, Hq, Hq + Hk);
  in.v = qkv.slice(1, Hq + Hk, H);
  in.dout = Tensor::normal({T, Hq, D}, 601, 1, 0.0f, 1.0f);
  in.layout = SeqLayout::from_lengths({50, 70});
  const AttentionConfig config = lrsa_cfg(2, 10, 0.3);
  AttentionForward fwd;
  attention_forward(config, in.q, in.k, in.v, in.layout, fwd);
  Tensor dqkv = Tensor::zeros({T, H, D}, DType::F32);
  Tensor dq = dqkv.slice(1, 0, Hq), dk = dqkv.slice(1, Hq, Hq + Hk), dv = dqkv.slice(1, Hq + Hk, H);
  attention_backward(config, in.q, in.k, in.v, in.layout, fwd, in.dout, dq, dk, dv);

  Inputs packed = in;
  packed.q = in.q.contiguous();
  packed.k = in.k.contiguous();
  packed.v = in.v.contiguous();
  const Outputs expected = test::run_attention(config, packed);
  CHECK(fwd.out.to_doubles() == expected.out);
  CHECK(dq.to_doubles() == expected.dq);
  CHECK(dk.to_doubles() == expected.dk);
  CHECK(dv.to_doubles() == expected.dv);
}

TEST_CASE("attention rejects invalid arguments clearly", "[attn]") {
  const Problem problem{{40}, 4, 2, 16, DType::F32, 701};
  const Inputs in = test::make_inputs(problem);
  const AttentionConfig config = lrsa_cfg(2, 8, 0.5);
  AttentionForward fwd;
  CHECK_THROWS_WITH(attention_forward(config, in.q.slice(1, 0, 3), in.k, in.v, in.layout, fwd),
                    Catch::Contains("attention_forward: q heads (3) must be a positive multiple of k/v heads (2)"));
  CHECK_THROWS_WITH(attention_forward(config, in.q.to(DType::BF16), in.k, in.v, in.layout, fwd),
                    Catch::Contains("attention_forward: q must be f32 like q/k/v, got bf16[40, 4, 16]"));
  CHECK_THROWS_WITH(attention_forward(config, in.q, in.k, in.v, SeqLayout::from_lengths({20, 19}), fwd),
                    Catch::Contains("layout.cu_seqlens ends at 39 but the tensors hold 40 tokens"));
  CHECK_THROWS_WITH(attention_forward(lrsa_cfg(2, 8, 0.1), in.q, in.k, in.v, in.layout, fwd),
                    Catch::Contains("attention.ratio: ratio * lag = 0.1 * 8 gives K = 0"));
  const Tensor narrow = Tensor::zeros({40, 2, 1}, DType::F32);
  CHECK_THROWS_WITH(attention_forward(config, narrow, narrow, narrow, in.layout, fwd),
                    Catch::Contains("head dimension 1 < 2"));
  AttentionForward wrong;
  wrong.out = Tensor::zeros({40, 2, 16}, DType::F32);
  CHECK_THROWS_WITH(attention_forward(config, in.q, in.k, in.v, in.layout, wrong),
                    Catch::Contains("attention_forward: result.out must have shape [40, 4, 16]"));

  attention_forward(config, in.q, in.k, in.v, in.layout, fwd);
  Tensor dq, dk, dv;
  // A selection saved under other parameters, or none (a dense forward), is not silently reused.
  CHECK_THROWS_WITH(attention_backward(lrsa_cfg(2, 4, 0.5), in.q, in.k, in.v, in.layout, fwd, in.dout, dq, dk, dv),
                    Catch::Contains("attention_backward: the LRSA selection does not belong to this layout"));
  AttentionForward dense_fwd;
  attention_forward(test::dense_config(), in.q, in.k, in.v, in.layout, dense_fwd);
  CHECK_THROWS_WITH(attention_backward(config, in.q, in.k, in.v, in.layout, dense_fwd, in.dout, dq, dk, dv),
                    Catch::Contains("the LRSA selection does not belong to this layout"));
  CHECK_THROWS_WITH(attention_backward(config, in.q, in.k, in.v, in.layout, fwd, in.dout.slice(0, 0, 39), dq, dk, dv),
                    Catch::Contains("attention_backward: dout must have shape [40, 4, 16]"));
  AttentionForward corrupt = fwd;
  corrupt.selection.indices = fwd.selection.indices.clone();
  corrupt.selection.indices.data_as<int32_t>()[0] = 39;
  CHECK_THROWS_WITH(attention_backward(config, in.q, in.k, in.v, in.layout, corrupt, in.dout, dq, dk, dv),
                    Catch::Contains("selection.indices[0, 0, 0] = 39 is not an ascending row of partition [2, 10)"));
  CHECK_NOTHROW(attention_backward(config, in.q, in.k, in.v, in.layout, fwd, in.dout, dq, dk, dv));
}

TEST_CASE("CUDA attention matches the reference as well as the CPU implementation does", "[attn][cuda]") {
  // The CUDA kernels take D in {64, 128} and lag a multiple of their 64-row tile.
  const std::vector<AttnCase> gpu_cases = {
      {"cuda bf16 LRSA", {{700}, 4, 2, 64, DType::BF16, 801}, lrsa_cfg(16, 128, 0.25)},
      {"cuda bf16 LRSA packed, GQA 7", {{400, 130, 333}, 7, 1, 128, DType::BF16, 802}, lrsa_cfg(5, 64, 0.5, 0.5f)},
      {"cuda bf16 LRSA, T < S + 2L", {{200}, 2, 2, 64, DType::BF16, 803}, lrsa_cfg(3, 128, 0.25)},
      {"cuda bf16 r = 1", {{600}, 2, 1, 128, DType::BF16, 804}, lrsa_cfg(0, 128, 1.0, 0.0f)},
      {"cuda bf16 dense", {{500, 300}, 4, 2, 64, DType::BF16, 805}, test::dense_config()},
      {"cuda f32 LRSA", {{900}, 2, 1, 64, DType::F32, 806}, lrsa_cfg(7, 256, 0.125, 2.0f)},
      {"cuda f32 dense", {{400}, 2, 2, 128, DType::F32, 807}, test::dense_config()},
  };
  for (AttnCase c : gpu_cases) {
    INFO(describe(c));
    const Inputs cpu = test::make_inputs(c.problem);
    const Inputs gpu = test::make_inputs(c.problem, Device::cuda(0));
    const Outputs on_cpu = test::run_attention(c.config, cpu);
    const Outputs exact = reference(c, cpu);
    // The baseline is a naive bf16 implementation, also for f32 inputs: the CUDA kernels
    // document that they compute f32 inputs in bf16 (kernels/attn_common.cu).
    const Outputs baseline = reference(c, cpu, ReferenceRounding::Bf16);
    for (bool deterministic : {false, true}) {
      c.config.deterministic = deterministic;
      INFO((deterministic ? "deterministic" : "default"));
      const Outputs ours = test::run_attention(c.config, gpu);
      CHECK(ours.selection == on_cpu.selection);
      check_rule(ours, baseline, exact);
      if (deterministic) {
        const Outputs again = test::run_attention(c.config, gpu);
        CHECK(again.dq == ours.dq);
        CHECK(again.dk == ours.dk);
        CHECK(again.dv == ours.dv);
      }
    }
  }
}
