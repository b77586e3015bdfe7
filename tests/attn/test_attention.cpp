// Dense and LRSA attention, forward and backward: the CPU implementation against the naive fp64
// reference over many shapes (f32 tightly, bf16 by the FlashAttention 2x rule), the reference's
// backward against finite differences, the spec's consequences, determinism, views, errors,
// the CUDA path (native kernels, cuDNN, and the Hopper wgmma kernels on sm_90 devices) against the
// reference with the CPU implementation as the baseline, and the cuDNN varlen wrapper against a
// direct fp64 computation.
#include <catch2/catch.hpp>

#include <omp.h>

#include <array>
#include <cmath>

#include "attn/attn_testing.h"
#ifdef LRSA_WITH_CUDNN
#include "../../kernels/attn_cudnn.h"
#endif
#include "support/device.h"
#ifdef LRSA_WITH_CUDA
#include "../../kernels/attn_wgmma.h"
#include "../../kernels/attn_wgmma_units.h"
#endif

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
    test::check_rule(ours, reference(c, in, ReferenceRounding::Bf16), reference(c, in));
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

namespace {

// One forward + backward with q/k/v viewing a fused [T, Hq + 2 Hk, D] buffer (as the decoder lays
// them out) and dQ/dK/dV written into one, beside the same call on contiguous copies.
struct FusedQkvRun {
  Outputs fused, contiguous;
};
FusedQkvRun run_fused_qkv(const AttentionConfig& config, const Problem& p, Device device) {
  const int64_t T = test::total_tokens(p), H = p.Hq + 2 * p.Hk;
  const Tensor qkv = Tensor::normal({T, H, p.D}, p.seed, 0, 0.0f, 1.0f, p.dtype).to(device);
  Inputs in;
  in.q = qkv.slice(1, 0, p.Hq);
  in.k = qkv.slice(1, p.Hq, p.Hq + p.Hk);
  in.v = qkv.slice(1, p.Hq + p.Hk, H);
  in.dout = Tensor::normal({T, p.Hq, p.D}, p.seed, 1, 0.0f, 1.0f, p.dtype).to(device);
  in.layout = SeqLayout::from_lengths(p.lengths, device);
  AttentionForward fwd;
  attention_forward(config, in.q, in.k, in.v, in.layout, fwd);
  Tensor dqkv = Tensor::zeros({T, H, p.D}, p.dtype, device);
  Tensor dq = dqkv.slice(1, 0, p.Hq), dk = dqkv.slice(1, p.Hq, p.Hq + p.Hk), dv = dqkv.slice(1, p.Hq + p.Hk, H);
  attention_backward(config, in.q, in.k, in.v, in.layout, fwd, in.dout, dq, dk, dv);
  return {{fwd.out.to_doubles(), {}, dq.to_doubles(), dk.to_doubles(), dv.to_doubles(), {}},
          test::run_attention(config, test::contiguous(in))};
}

}  // namespace

TEST_CASE("q/k/v and their gradients may be views into fused QKV buffers", "[attn]") {
  const auto [fused, expected] =
      run_fused_qkv(lrsa_cfg(2, 10, 0.3), {{50, 70}, 4, 2, 16, DType::F32, 601}, Device::cpu());
  CHECK(fused.out == expected.out);
  CHECK(fused.dq == expected.dq);
  CHECK(fused.dk == expected.dk);
  CHECK(fused.dv == expected.dv);
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
  // The CUDA kernels take D in {64, 128} and lag a multiple of their 64-row tile. Every case runs
  // on the native kernels (default and deterministic); the bf16 cases also on cuDNN (LRSA by
  // gathering each query partition's keys, whose dK/dV get kGatheredCopiesAllowance) and on the
  // wgmma kernels where the device is sm_90.
  const std::vector<AttnCase> gpu_cases = {
      {"cuda bf16 LRSA", {{700}, 4, 2, 64, DType::BF16, 801}, lrsa_cfg(16, 128, 0.25)},
      {"cuda bf16 LRSA packed, GQA 7", {{400, 130, 333}, 7, 1, 128, DType::BF16, 802}, lrsa_cfg(5, 64, 0.5, 0.5f)},
      {"cuda bf16 LRSA, T < S + 2L", {{200}, 2, 2, 64, DType::BF16, 803}, lrsa_cfg(3, 128, 0.25)},
      {"cuda bf16 LRSA packed d64, GQA 7, a document shorter than the sinks", {{400, 130, 3, 333}, 7, 1, 64,
       DType::BF16, 811}, lrsa_cfg(5, 64, 0.5, 0.5f)},
      {"cuda bf16 LRSA, lag 192", {{900}, 4, 2, 64, DType::BF16, 812}, lrsa_cfg(16, 192, 0.25)},
      {"cuda bf16 r = 1", {{600}, 2, 1, 128, DType::BF16, 804}, lrsa_cfg(0, 128, 1.0, 0.0f)},
      {"cuda bf16 dense", {{500, 300}, 4, 2, 64, DType::BF16, 805}, test::dense_config()},
      {"cuda bf16 dense, uneven documents and a 1-token one", {{37, 1, 260, 129}, 4, 2, 64, DType::BF16, 808},
       test::dense_config()},
      {"cuda bf16 dense GQA 7, d 128", {{333, 64, 200}, 7, 1, 128, DType::BF16, 809}, test::dense_config()},
      {"cuda bf16 dense MHA, d 128", {{256}, 2, 2, 128, DType::BF16, 810}, test::dense_config()},
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
    std::vector<Backend> backends = {Backend::Native};
#ifdef LRSA_WITH_CUDNN
    if (c.problem.dtype == DType::BF16) backends.push_back(Backend::Cudnn);
#endif
    if (c.problem.dtype == DType::BF16) {
      if (test::device_is_sm90())
        backends.push_back(Backend::Wgmma);
      else
        WARN("wgmma backend not checked: the device is not sm_90");
    }
    backends.push_back(Backend::Auto);  // LRSA bf16 on sm_90: the wgmma kernels
    for (Backend backend : backends) {
      c.config.backend = backend;
      for (bool deterministic : {false, true}) {
        // cuDNN and wgmma refuse it (next tests); auto then runs the native kernels, checked above
        if (backend != Backend::Native && deterministic) continue;
        c.config.deterministic = deterministic;
        INFO(attn::backend_name(backend) << (deterministic ? ", deterministic" : ", default"));
        const Outputs ours = test::run_attention(c.config, gpu);
        CHECK(ours.selection == on_cpu.selection);
        // Auto's LRSA backward runs on cuDNN's gathered copies where the wgmma kernels cannot run it
        // (not sm_90).
        const bool gathered = (backend == Backend::Cudnn || backend == Backend::Auto) && c.config.mode == Mode::Lrsa;
        test::check_rule(ours, baseline, exact, gathered ? test::kGatheredCopiesAllowance : 0);
        if (deterministic) {
          const Outputs again = test::run_attention(c.config, gpu);
          CHECK(again.dq == ours.dq);
          CHECK(again.dk == ours.dk);
          CHECK(again.dv == ours.dv);
        }
      }
    }
  }
}

TEST_CASE("attention backend cudnn says why it cannot run a call", "[attn][cuda]") {
  auto run = [](AttentionConfig config, const Problem& p) { test::run_attention(config, test::make_inputs(p, Device::cuda(0))); };
  AttentionConfig dense = test::dense_config();
  dense.backend = Backend::Cudnn;
#ifdef LRSA_WITH_CUDNN
  CHECK_NOTHROW(run(dense, {{100}, 2, 1, 64, DType::BF16, 820}));
  CHECK_THROWS_WITH(run(dense, {{100}, 2, 1, 64, DType::F32, 821}), Catch::Contains("cuDNN attention takes bf16"));
  AttentionConfig deterministic = dense;
  deterministic.deterministic = true;
  CHECK_THROWS_WITH(run(deterministic, {{100}, 2, 1, 64, DType::BF16, 822}), Catch::Contains("deterministic"));
#else
  CHECK_THROWS_WITH(run(dense, {{100}, 2, 1, 64, DType::BF16, 820}), Catch::Contains("this build has no cuDNN"));
#endif
  // Auto falls back to the native kernels where cuDNN cannot run.
  AttentionConfig automatic = test::dense_config();
  CHECK_NOTHROW(run(automatic, {{100}, 2, 1, 64, DType::F32, 824}));
}

#ifdef LRSA_WITH_CUDA
TEST_CASE("the wgmma kernels' compacted rows are each document's sinks, then its selection by partition", "[attn]") {
  // On the CPU: the host plan of kernels/attn_wgmma.cu against a CPU selection, documents shorter
  // than the sinks, without a selectable partition, and with several.
  const Problem problem{{400, 3, 130, 333, 70}, 4, 2, 16, DType::F32, 850};
  const Inputs in = test::make_inputs(problem);
  const AttentionConfig config = lrsa_cfg(5, 32, 0.25);
  const LrsaSelection selection = lrsa_select(in.k, in.v, in.layout, config.lrsa);
  const std::vector<int64_t> indices = selection.indices.to_ints();
  const int64_t kept = config.lrsa.kept(), per_head = selection.num_parts() * kept;
  const cuda::CompactedRows rows = cuda::compacted_rows(in.layout.cu_seqlens, config.lrsa);
  REQUIRE(rows.start.size() == in.layout.cu_seqlens.size());
  REQUIRE(int64_t(rows.source.size()) == rows.start.back());
  for (int64_t head = 0; head < problem.Hk; ++head)
    for (size_t b = 0; b + 1 < in.layout.cu_seqlens.size(); ++b) {
      const int64_t begin = in.layout.cu_seqlens[b], n = in.layout.cu_seqlens[b + 1] - begin;
      std::vector<int64_t> want;  // [sink | Sel(0) | Sel(1) | ...] of document b
      for (int64_t j = 0; j < std::min<int64_t>(config.lrsa.sink, n); ++j) want.push_back(begin + j);
      for (int64_t p = selection.part_offset[b]; p < selection.part_offset[b + 1]; ++p)
        for (int64_t i = 0; i < kept; ++i) want.push_back(indices[size_t(head * per_head + p * kept + i)]);
      std::vector<int64_t> got;
      for (int c = rows.start[b]; c < rows.start[b + 1]; ++c) {
        const int64_t s = rows.source[size_t(c)];
        got.push_back(s >= 0 ? s : indices[size_t(head * per_head - 1 - s)]);
      }
      INFO("document " << b << ", KV head " << head);
      CHECK(got == want);
    }
}

TEST_CASE("the wgmma backward's work units: 24 query tiles from 32K tokens, about 96 steps below",
          "[attn]") {
  // The fastest of 12, 24 and 48 in sessions 22 and 28 (kernels/attn_wgmma_units.h).
  using cuda::wgmma::bwd::unit_query_tiles;
  CHECK(unit_query_tiles(32768, 7) == 24);  // Qwen2.5-0.5B, 14:2
  CHECK(unit_query_tiles(131072, 4) == 24);
  CHECK(unit_query_tiles(32767, 7) == 12);
  CHECK(unit_query_tiles(8192, 7) == 12);
  CHECK(unit_query_tiles(16384, 4) == 24);  // Llama-3.2-1B, 32:8
  CHECK(unit_query_tiles(3072, 7) == 24);   // a key tile's whole run
  CHECK(unit_query_tiles(3073, 7) == 12);
  CHECK(unit_query_tiles(2048, 2) == 48);
  CHECK(unit_query_tiles(8192, 16) == 12);
}

TEST_CASE("auto prefers the wgmma kernels for LRSA up to 128K tokens at d64, up to 32K at d128", "[attn]") {
  // Where they were measured faster than the cuDNN path (kernels/attn_wgmma.cu, wgmma_preferred).
  const AttentionConfig lrsa = lrsa_cfg(16, 1024, 0.25), dense = test::dense_config();
  auto prefers = [](const AttentionConfig& config, std::vector<int64_t> lengths, int64_t head_dim) {
    return cuda::wgmma_preferred(config, SeqLayout::from_lengths(lengths), head_dim);
  };
  CHECK(prefers(lrsa, {131072}, 64));
  CHECK_FALSE(prefers(lrsa, {131073}, 64));
  CHECK(prefers(lrsa, {32768, 1000}, 128));
  CHECK_FALSE(prefers(lrsa, {100, 32769}, 128));
  for (int64_t head_dim : {64, 128}) CHECK_FALSE(prefers(dense, {4096}, head_dim));
}
#endif

TEST_CASE("attention backend wgmma takes q/k/v and their gradients as views into fused buffers", "[attn][cuda]") {
  if (!test::device_is_sm90()) {
    WARN("not run: the wgmma backend needs an sm_90 device");
    return;
  }
  AttentionConfig config = lrsa_cfg(16, 64, 0.25);
  config.backend = Backend::Wgmma;
  const auto [fused, expected] = run_fused_qkv(config, {{300, 400}, 4, 2, 64, DType::BF16, 840}, Device::cuda(0));
  CHECK(fused.out == expected.out);  // the same kernels on the same numbers
  // dQ's fp32 sums are added in an order that varies: allow the last bf16 bit of the largest value.
  CHECK(test::rel_max(fused.dq, expected.dq) <= 1.0 / 128);
  CHECK(test::rel_max(fused.dk, expected.dk) <= 1.0 / 128);
  CHECK(test::rel_max(fused.dv, expected.dv) <= 1.0 / 128);
}

TEST_CASE("attention backend wgmma says why it cannot run a call", "[attn][cuda]") {
  auto run = [](AttentionConfig config, const Problem& p) { test::run_attention(config, test::make_inputs(p, Device::cuda(0))); };
  AttentionConfig dense = test::dense_config();
  dense.backend = Backend::Wgmma;
  if (!test::device_is_sm90()) {
    CHECK_THROWS_WITH(run(dense, {{100}, 2, 1, 64, DType::BF16, 830}), Catch::Contains("need an sm_90 device"));
    return;
  }
  CHECK_NOTHROW(run(dense, {{100}, 2, 1, 64, DType::BF16, 830}));
  CHECK_NOTHROW(run(dense, {{100}, 2, 1, 128, DType::BF16, 831}));
  CHECK_THROWS_WITH(run(dense, {{100}, 2, 1, 96, DType::BF16, 834}), Catch::Contains("take head dim 64 or 128"));
  CHECK_THROWS_WITH(run(dense, {{100}, 2, 1, 64, DType::F32, 832}), Catch::Contains("take bf16"));
  AttentionConfig deterministic = dense;
  deterministic.deterministic = true;
  CHECK_THROWS_WITH(run(deterministic, {{100}, 2, 1, 64, DType::BF16, 833}), Catch::Contains("deterministic"));
}

#ifdef LRSA_WITH_CUDNN
namespace {

// Straightforward fp64 attention over varlen spans, bottom-right causal or not, forward and
// backward (the contract of kernels/attn_cudnn.h): sequence b's queries start at row
// q_starts[b], its keys at cu_kv[b]. Inputs are [rows, H, D] doubles.
struct VarlenReference {
  std::vector<double> out, lse, dq, dk, dv;
};

VarlenReference varlen_reference(const std::vector<double>& q, const std::vector<double>& k,
                                 const std::vector<double>& v, const std::vector<double>& dout,
                                 const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_kv,
                                 const std::vector<int64_t>& q_starts, bool causal, int64_t Tq, int64_t Tk, int64_t Hq,
                                 int64_t Hk, int64_t D, double scale) {
  VarlenReference r{std::vector<double>(Tq * Hq * D), std::vector<double>(Hq * Tq), std::vector<double>(Tq * Hq * D),
                    std::vector<double>(Tk * Hk * D), std::vector<double>(Tk * Hk * D)};
  auto qrow = [&](int64_t t, int64_t h) { return (t * Hq + h) * D; };
  auto krow = [&](int64_t t, int64_t h) { return (t * Hk + h) * D; };
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t lq = cu_q[b + 1] - cu_q[b], lk = cu_kv[b + 1] - cu_kv[b];
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hk);
      for (int64_t i = 0; i < lq; ++i) {
        const int64_t t = q_starts[b] + i, last = causal ? lk - lq + i : lk - 1;  // keys 0..last are visible
        std::vector<double> p(last + 1);
        double top = -INFINITY;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[qrow(t, h) + d] * k[krow(cu_kv[b] + j, hk) + d];
          p[j] = dot * scale;
          top = std::max(top, p[j]);
        }
        double sum = 0;
        for (double s : p) sum += std::exp(s - top);
        const double lse = top + std::log(sum);
        r.lse[h * Tq + t] = lse;
        double delta = 0;
        for (int64_t j = 0; j <= last; ++j) {
          p[j] = std::exp(p[j] - lse);
          for (int64_t d = 0; d < D; ++d) r.out[qrow(t, h) + d] += p[j] * v[krow(cu_kv[b] + j, hk) + d];
        }
        for (int64_t d = 0; d < D; ++d) delta += dout[qrow(t, h) + d] * r.out[qrow(t, h) + d];
        for (int64_t j = 0; j <= last; ++j) {
          const int64_t key = cu_kv[b] + j;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += dout[qrow(t, h) + d] * v[krow(key, hk) + d];
          const double ds = p[j] * (dp - delta) * scale;
          for (int64_t d = 0; d < D; ++d) {
            r.dq[qrow(t, h) + d] += ds * k[krow(key, hk) + d];
            r.dk[krow(key, hk) + d] += ds * q[qrow(t, h) + d];
            r.dv[krow(key, hk) + d] += p[j] * dout[qrow(t, h) + d];
          }
        }
      }
    }
  }
  return r;
}

// Rows [0, covered) of a [rows, H, D] buffer.
std::vector<double> head_rows(const std::vector<double>& x, int64_t covered, int64_t H, int64_t D) {
  return {x.begin(), x.begin() + covered * H * D};
}

// Spans of cumulative query / key counts, on the GPU as cudnn_varlen_* take them.
cuda::VarlenSpans gpu_spans(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_kv) {
  cuda::VarlenSpans s;
  s.cu_seqlens_q = Tensor::from_ints(cu_q, {int64_t(cu_q.size())}, DType::I32, Device::cuda(0));
  s.cu_seqlens_kv = Tensor::from_ints(cu_kv, {int64_t(cu_kv.size())}, DType::I32, Device::cuda(0));
  s.batch = int64_t(cu_q.size()) - 1;
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    s.max_seqlen_q = std::max(s.max_seqlen_q, cu_q[b + 1] - cu_q[b]);
    s.max_seqlen_kv = std::max(s.max_seqlen_kv, cu_kv[b + 1] - cu_kv[b]);
  }
  return s;
}

}  // namespace

TEST_CASE("cudnn varlen attention: bottom-right causal spans, GQA, views, untouched rows", "[attn][cuda]") {
  const int64_t Hq = 6, Hk = 2, D = 64;
  // (len_q, len_kv): longer key spans (the LRSA gather), equal ones, a single query.
  const std::vector<std::pair<int64_t, int64_t>> spans = {{64, 200}, {1, 50}, {130, 130}, {77, 300}};
  std::vector<int64_t> cu_q = {0}, cu_kv = {0};
  for (auto [lq, lk] : spans) {
    cu_q.push_back(cu_q.back() + lq);
    cu_kv.push_back(cu_kv.back() + lk);
  }
  const int64_t Tq = cu_q.back() + 5, Tk = cu_kv.back() + 3;  // trailing rows no span covers
  const Device gpu = Device::cuda(0);
  // q and dout plain, k/v views into one fused [Tk, 2 Hk, D] buffer; dk/dv likewise.
  const Tensor q = Tensor::normal({Tq, Hq, D}, 830, 0, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor kv = Tensor::normal({Tk, 2 * Hk, D}, 830, 1, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor dout = Tensor::normal({Tq, Hq, D}, 830, 2, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor k = kv.slice(1, 0, Hk), v = kv.slice(1, Hk, 2 * Hk);
  const double sentinel = 7.0;
  Tensor out = Tensor::full({Tq, Hq, D}, sentinel, DType::BF16, gpu);
  Tensor lse = Tensor::full({Hq, Tq}, sentinel, DType::F32, gpu);
  Tensor dq = Tensor::full({Tq, Hq, D}, sentinel, DType::BF16, gpu);
  Tensor dkv = Tensor::full({Tk, 2 * Hk, D}, sentinel, DType::BF16, gpu);
  Tensor dk = dkv.slice(1, 0, Hk), dv = dkv.slice(1, Hk, 2 * Hk);

  const cuda::VarlenSpans s = gpu_spans(cu_q, cu_kv);
  const float scale = 1.0f / std::sqrt(float(D));
  REQUIRE(cuda::cudnn_attention_supported(D, DType::BF16));
  cuda::cudnn_varlen_forward(q, k, v, s, scale, out, lse);
  cuda::cudnn_varlen_backward(q, k, v, out, lse, dout, s, scale, dq, dk, dv);

  const VarlenReference ref =
      varlen_reference(q.to_doubles(), k.contiguous().to_doubles(), v.contiguous().to_doubles(), dout.to_doubles(),
                       cu_q, cu_kv, cu_q, true, Tq, Tk, Hq, Hk, D, scale);
  const int64_t rows_q = cu_q.back(), rows_kv = cu_kv.back();
  const std::vector<double> got_out = out.to_doubles(), got_dq = dq.to_doubles(), got_lse = lse.to_doubles();
  const std::vector<double> got_dk = dk.contiguous().to_doubles(), got_dv = dv.contiguous().to_doubles();
  // bf16 outputs: ~0.4% rounding of each stored value, plus bf16 P in P V.
  CHECK(test::rel_max(head_rows(got_out, rows_q, Hq, D), head_rows(ref.out, rows_q, Hq, D)) < 2e-2);
  CHECK(test::rel_max(head_rows(got_dq, rows_q, Hq, D), head_rows(ref.dq, rows_q, Hq, D)) < 3e-2);
  CHECK(test::rel_max(head_rows(got_dk, rows_kv, Hk, D), head_rows(ref.dk, rows_kv, Hk, D)) < 3e-2);
  CHECK(test::rel_max(head_rows(got_dv, rows_kv, Hk, D), head_rows(ref.dv, rows_kv, Hk, D)) < 3e-2);
  double lse_err = 0;
  for (int64_t h = 0; h < Hq; ++h) {
    for (int64_t t = 0; t < Tq; ++t) {
      if (t < rows_q) lse_err = std::max(lse_err, std::abs(got_lse[h * Tq + t] - ref.lse[h * Tq + t]));
      else CHECK(got_lse[h * Tq + t] == sentinel);
    }
  }
  CHECK(lse_err < 1e-2);
  // Rows past the spans are left as they were.
  for (size_t i = rows_q * Hq * D; i < got_out.size(); ++i) {
    REQUIRE(got_out[i] == sentinel);
    REQUIRE(got_dq[i] == sentinel);
  }
  for (size_t i = rows_kv * Hk * D; i < got_dk.size(); ++i) {
    REQUIRE(got_dk[i] == sentinel);
    REQUIRE(got_dv[i] == sentinel);
  }
}

TEST_CASE("cudnn varlen attention: not causal, query rows with gaps (LRSA's grouped history)", "[attn][cuda]") {
  const int64_t Hq = 4, Hk = 2, D = 64;
  // (first query row, len_q, len_kv): gaps before, between and after the sequences; any lengths.
  const std::vector<std::array<int64_t, 3>> spans = {{9, 70, 40}, {100, 3, 150}, {103, 64, 64}};
  std::vector<int64_t> cu_q = {0}, cu_kv = {0}, q_starts;
  for (auto [start, lq, lk] : spans) {
    q_starts.push_back(start);
    cu_q.push_back(cu_q.back() + lq);
    cu_kv.push_back(cu_kv.back() + lk);
  }
  const int64_t end = spans.back()[0] + spans.back()[1], Tq = end + 4, Tk = cu_kv.back();
  q_starts.push_back(end);
  std::vector<bool> covered(size_t(Tq), false);
  for (auto [start, lq, lk] : spans)
    for (int64_t t = start; t < start + lq; ++t) covered[size_t(t)] = true;
  const Device gpu = Device::cuda(0);
  const Tensor q = Tensor::normal({Tq, Hq, D}, 840, 0, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor k = Tensor::normal({Tk, Hk, D}, 840, 1, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor v = Tensor::normal({Tk, Hk, D}, 840, 2, 0.0f, 1.0f, DType::BF16).to(gpu);
  const Tensor dout = Tensor::normal({Tq, Hq, D}, 840, 3, 0.0f, 1.0f, DType::BF16).to(gpu);
  const double sentinel = 7.0;
  Tensor out = Tensor::full({Tq, Hq, D}, sentinel, DType::BF16, gpu);
  Tensor lse = Tensor::full({Hq, Tq}, sentinel, DType::F32, gpu);
  Tensor dq = Tensor::full({Tq, Hq, D}, sentinel, DType::BF16, gpu);
  Tensor dk = Tensor::empty({Tk, Hk, D}, DType::BF16, gpu), dv = Tensor::empty({Tk, Hk, D}, DType::BF16, gpu);

  cuda::VarlenSpans s = gpu_spans(cu_q, cu_kv);
  s.q_starts = Tensor::from_ints(q_starts, {int64_t(q_starts.size())}, DType::I32, gpu);
  s.causal = false;
  const float scale = 1.0f / std::sqrt(float(D));
  REQUIRE(cuda::cudnn_attention_supported(D, DType::BF16));
  cuda::cudnn_varlen_forward(q, k, v, s, scale, out, lse);
  cuda::cudnn_varlen_backward(q, k, v, out, lse, dout, s, scale, dq, dk, dv);

  const VarlenReference ref = varlen_reference(q.to_doubles(), k.to_doubles(), v.to_doubles(), dout.to_doubles(),
                                               cu_q, cu_kv, q_starts, false, Tq, Tk, Hq, Hk, D, scale);
  const std::vector<double> got_out = out.to_doubles(), got_dq = dq.to_doubles(), got_lse = lse.to_doubles();
  // Covered rows against the reference; rows in gaps untouched, but for lse: -inf up to the last
  // sequence's end (what the LRSA merge skips), untouched after it.
  std::vector<double> out_rows, ref_out_rows, dq_rows, ref_dq_rows;
  double lse_err = 0;
  for (int64_t t = 0; t < Tq; ++t) {
    for (int64_t h = 0; h < Hq; ++h) {
      const double l = got_lse[size_t(h * Tq + t)];
      if (covered[size_t(t)]) lse_err = std::max(lse_err, std::abs(l - ref.lse[size_t(h * Tq + t)]));
      else CHECK(l == (t < end ? -INFINITY : sentinel));
    }
    for (int64_t i = t * Hq * D; i < (t + 1) * Hq * D; ++i) {
      if (covered[size_t(t)]) {
        out_rows.push_back(got_out[size_t(i)]);
        ref_out_rows.push_back(ref.out[size_t(i)]);
        dq_rows.push_back(got_dq[size_t(i)]);
        ref_dq_rows.push_back(ref.dq[size_t(i)]);
      } else {
        REQUIRE(got_out[size_t(i)] == sentinel);
        REQUIRE(got_dq[size_t(i)] == sentinel);
      }
    }
  }
  CHECK(lse_err < 1e-2);
  CHECK(test::rel_max(out_rows, ref_out_rows) < 2e-2);
  CHECK(test::rel_max(dq_rows, ref_dq_rows) < 3e-2);
  CHECK(test::rel_max(dk.to_doubles(), ref.dk) < 3e-2);
  CHECK(test::rel_max(dv.to_doubles(), ref.dv) < 3e-2);
}
#endif
