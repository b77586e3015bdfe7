// LRSA on cuDNN's dense flash attention ("gather then dense flash", kernels/attn_lrsa_cudnn.cu):
// the gather plan (kernels/attn_lrsa_gather_plan.h) checked on the host with the functions the
// kernels use: within the virtual sequences that hold it (its causal one's bottom-right window,
// plus its group's shared history when partitions are grouped), every query (per KV
// head, real CPU selections) meets exactly the keys the spec's visibility rule admits, once
// each; the backward's copy lists are exactly the inverse of the gather. On a GPU built with
// cuDNN: forward and backward against the fp64 reference by the FlashAttention rule.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "../../kernels/attn_lrsa_gather_plan.h"
#include "attn/attn_testing.h"
#ifdef LRSA_WITH_CUDNN
#include "../../kernels/attn_lrsa_cudnn.h"
#endif

using namespace lrsa;
using namespace lrsa::cuda::lrsa_gather;

namespace {

struct PlanCase {
  std::vector<int64_t> lengths;
  int64_t Hk;
  attn::LrsaParams params;
};

std::vector<PlanCase> plan_cases() {
  auto params = [](int64_t S, int64_t L, double r) { return test::lrsa_config(S, L, r).lrsa; };
  std::vector<PlanCase> cases = {
      {{1000}, 2, params(16, 128, 0.25)},                // T not a multiple of L
      {{200}, 1, params(16, 128, 0.25)},                 // T < S + 2L: one plain causal sequence
      {{700}, 3, params(0, 64, 0.5)},                    // S = 0
      {{37, 600, 5, 333, 1, 290}, 2, params(5, 64, 0.3)},  // packed documents of uneven lengths
      {{500}, 1, params(100, 32, 0.25)},                 // sink longer than a partition
      {{150, 151}, 2, params(3, 12, 0.75)},              // lag not a multiple of any tile
      {{400}, 2, params(4, 40, 1.0)},                    // r = 1: dense
      {{333}, 4, params(7, 16, 0.0625)},                 // K = 1
  };
  std::mt19937 rng(20261128);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < 12; ++i) {
    PlanCase c{{}, uniform(1, 3), params(uniform(0, 40), uniform(1, 80), 0)};
    // K = m exactly: floor((m + 0.5) / L * L) = m for m < L, and ratio 1 for m = L.
    const int m = uniform(1, int(c.params.lag));
    c.params.ratio = std::min(1.0, (m + 0.5) / double(c.params.lag));
    for (int d = uniform(1, 4); d > 0; --d) c.lengths.push_back(uniform(1, 700));
    cases.push_back(c);
  }
  return cases;
}

// Partitions per grouped sequence: 0 (one sequence per partition, the ungrouped reference),
// cuDNN's 8 (both directions), and small groups that short test documents reach.
constexpr int64_t kGroups[] = {0, 1, 2, 3, 8};  // 8: cuda::kLrsaCudnnGroup

std::string describe(const PlanCase& c) {
  return fmt::format("lengths [{}] Hk {} S {} L {} K {}", fmt::join(c.lengths, ", "), c.Hk, c.params.sink,
                     c.params.lag, c.params.kept());
}

// A real selection (the CPU implementation) of random keys and values: [Hk, num_parts * K].
std::vector<int32_t> cpu_selection(const PlanCase& c, const attn::SeqLayout& layout, uint64_t seed) {
  const test::Inputs in = test::make_inputs({c.lengths, c.Hk, c.Hk, 16, DType::F32, seed});
  const attn::LrsaSelection sel = attn::lrsa_select(in.k, in.v, layout, c.params);
  const std::vector<int64_t> rows = sel.indices.to_ints();
  return {rows.begin(), rows.end()};
}

}  // namespace

TEST_CASE("LRSA gather plan: each query's windows hold exactly its visible keys, once", "[attn]") {
  uint64_t seed = 1;
  for (const PlanCase& c : plan_cases()) {
    const attn::SeqLayout layout = attn::SeqLayout::from_lengths(c.lengths);
    const std::vector<int64_t>& cu = layout.cu_seqlens;
    const int64_t T = layout.total();
    const std::vector<int32_t> indices = cpu_selection(c, layout, seed++);
    for (const int64_t group : kGroups) {
      INFO(describe(c) << " group " << group);
      const GatherPlan plan = plan_gather(cu, c.params, group);
      const int64_t compact_rows = int64_t(plan.comp_first.size()) - 1;
      REQUIRE(int64_t(indices.size()) == c.Hk * compact_rows);

      // Spans as cuDNN needs them: the causal sequences' queries cover [0, T) in order with
      // 1 <= len_q <= len_kv; the grouped ones' are ascending, apart, within [0, T), non-empty.
      REQUIRE(plan.cu_kv.back() == plan.rows());
      CHECK(plan.rows() == gathered_rows(cu, c.params, group));
      if (group == 0) CHECK(plan.causal_sequences == plan.sequences());
      REQUIRE(plan.cu_q[size_t(plan.causal_sequences)] == T);
      int64_t bad_span = 0;
      for (int64_t s = 0; s < plan.sequences(); ++s) {
        const int64_t len_q = plan.cu_q[size_t(s) + 1] - plan.cu_q[size_t(s)];
        const int64_t len_kv = plan.cu_kv[size_t(s) + 1] - plan.cu_kv[size_t(s)];
        bad_span += len_q < 1 || len_kv < (plan.causal(s) ? len_q : 1);
        if (plan.causal(s)) bad_span += plan.q_start[size_t(s)] != plan.cu_q[size_t(s)];
        else if (s > plan.causal_sequences) bad_span += plan.q_start[size_t(s)] < plan.q_end(s - 1);
        bad_span += plan.q_end(s) > T;
      }
      CHECK(bad_span == 0);

      int64_t wrong = 0, checked = 0;
      for (int64_t h = 0; h < c.Hk; ++h) {
        const int32_t* head_indices = indices.data() + h * compact_rows;
        std::vector<char> selected(size_t(T), 0);
        for (int64_t i = 0; i < compact_rows; ++i) selected[size_t(head_indices[i])] = 1;
        // Keys each query meets: a causal sequence's bottom-right window, a grouped one's all.
        std::vector<std::vector<int64_t>> met(static_cast<size_t>(T));
        for (int64_t s = 0; s < plan.sequences(); ++s) {
          const int64_t q0 = plan.q_start[size_t(s)], kv0 = plan.cu_kv[size_t(s)];
          const int64_t len_q = plan.q_end(s) - q0, len_kv = plan.cu_kv[size_t(s) + 1] - kv0;
          for (int64_t t = q0; t < q0 + len_q; ++t) {
            const int64_t window = plan.causal(s) ? (len_kv - len_q) + (t - q0) + 1 : len_kv;
            for (int64_t g = kv0; g < kv0 + window; ++g)
              met[size_t(t)].push_back(source_row(plan.source[size_t(g)], head_indices));
          }
        }
        for (size_t b = 0; b + 1 < cu.size(); ++b) {
          for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
            std::vector<int64_t>& keys = met[size_t(t)];
            std::sort(keys.begin(), keys.end());
            std::vector<int64_t> want;
            for (int64_t j = cu[b]; j <= t; ++j)
              if (attn::lrsa_visible(t - cu[b], j - cu[b], c.params,
                                     [&](int64_t jj) { return selected[size_t(cu[b] + jj)] != 0; }))
                want.push_back(j);
            wrong += keys != want;  // equal sorted lists: no missing key, no extra one, no duplicate
            ++checked;
          }
        }
      }
      CHECK(checked == c.Hk * T);
      CHECK(wrong == 0);
    }
  }
}

TEST_CASE("LRSA gather plan: the backward's copy lists are exactly the inverse of the gather", "[attn]") {
  uint64_t seed = 100;
  for (const PlanCase& c : plan_cases()) {
    const attn::SeqLayout layout = attn::SeqLayout::from_lengths(c.lengths);
    const int64_t T = layout.total();
    const std::vector<int32_t> indices = cpu_selection(c, layout, seed++);
    for (const int64_t group : kGroups) {
      INFO(describe(c) << " group " << group);
      const GatherPlan plan = plan_gather(layout.cu_seqlens, c.params, group);
      const int64_t compact_rows = int64_t(plan.comp_first.size()) - 1;
      for (int64_t h = 0; h < c.Hk; ++h) {
        const int32_t* head_indices = indices.data() + h * compact_rows;
        // The inverse map of the backward (inverse_kernel): compact row of each selected row.
        std::vector<int32_t> inv(size_t(T), -1);
        for (int64_t i = 0; i < compact_rows; ++i) inv[size_t(head_indices[i])] = int32_t(i);
        std::vector<int> visits(size_t(plan.rows()), 0);
        int64_t wrong_source = 0, unordered = 0, split_differs = 0, has_copy_wrong = 0;
        const int32_t rows = int32_t(plan.rows()), split = rows / 3;
        for (int64_t r = 0; r < T; ++r) {
          std::vector<int32_t> copies, in_parts;
          for_each_copy_in(plan.lists(), r, inv[size_t(r)], 0, rows, [&](int32_t g) {
            ++visits[size_t(g)];
            wrong_source += source_row(plan.source[size_t(g)], head_indices) != r;
            copies.push_back(g);
          });
          // Raw copies ascending, then compact copies ascending (a fixed order of summation); the
          // raw ones come first in gathered order too (partition p is raw in sequences p and p + 1,
          // compact from p + 2 on and in grouped sequences, which come last), so the whole list
          // ascends.
          auto raw = [&](size_t i) { return plan.source[size_t(copies[i])] >= 0; };
          for (size_t i = 1; i < copies.size(); ++i)
            unordered += raw(i) == raw(i - 1) ? copies[i] <= copies[i - 1] : raw(i);
          unordered += !std::is_sorted(copies.begin(), copies.end());
          // Two passes over [0, split) and [split, rows) add the copies in the order one pass does.
          for (const auto& [g0, g1] : {std::pair{0, split}, std::pair{split, rows}}) {
            const size_t before = in_parts.size();
            for_each_copy_in(plan.lists(), r, inv[size_t(r)], g0, g1, [&](int32_t g) { in_parts.push_back(g); });
            has_copy_wrong += has_copy_in(plan.lists(), r, inv[size_t(r)], g0, g1) != (in_parts.size() > before);
          }
          split_differs += in_parts != copies;
        }
        CHECK(wrong_source == 0);
        CHECK(unordered == 0);
        CHECK(split_differs == 0);
        CHECK(has_copy_wrong == 0);
        CHECK(std::count(visits.begin(), visits.end(), 1) == plan.rows());  // every gathered row once
      }
    }
  }
}

TEST_CASE("LRSA gather plan: passes are maximal runs of sequences within the budget", "[attn]") {
  for (const PlanCase& c : plan_cases()) {
    for (const int64_t group : kGroups) {
      INFO(describe(c) << " group " << group);
      const GatherPlan plan = plan_gather(attn::SeqLayout::from_lengths(c.lengths).cu_seqlens, c.params, group);
      // A memory model that counts every argument, so each one's bookkeeping is checked.
      const auto bytes = [](int64_t seqs, int64_t rows, int64_t longest, int64_t q_rows) {
        return 1000 * seqs + rows + 3 * longest + 2 * q_rows;
      };
      const auto pass_bytes = [&](int64_t s0, int64_t s1) {
        int64_t longest = 0;
        for (int64_t s = s0; s < s1; ++s)
          longest = std::max<int64_t>(longest, plan.cu_kv[size_t(s) + 1] - plan.cu_kv[size_t(s)]);
        return bytes(s1 - s0, plan.cu_kv[size_t(s1)] - plan.cu_kv[size_t(s0)], longest,
                     plan.q_end(s1 - 1) - plan.q_start[size_t(s0)]);
      };
      // Every sequence in as few calls as the masks allow: one, or one per kind.
      const bool both_kinds = plan.causal_sequences < plan.sequences();
      const int64_t all = both_kinds ? std::max(pass_bytes(0, plan.causal_sequences),
                                                pass_bytes(plan.causal_sequences, plan.sequences()))
                                     : pass_bytes(0, plan.sequences());
      for (double budget : {0.0, double(all) / 5, double(all) / 2, double(all)}) {
        INFO("budget " << budget);
        const std::vector<int64_t> first = plan_passes(plan, budget, bytes);
        REQUIRE(first.size() >= 2);
        CHECK(first.front() == 0);
        CHECK(first.back() == plan.sequences());
        for (size_t i = 0; i + 1 < first.size(); ++i) {
          const int64_t s0 = first[i], s1 = first[i + 1];
          REQUIRE(s1 > s0);
          CHECK(plan.causal(s0) == plan.causal(s1 - 1));  // one mask per call
          CHECK((s1 - s0 == 1 || double(pass_bytes(s0, s1)) <= budget));  // within, or one sequence alone
          if (s1 < plan.sequences() && s1 != plan.causal_sequences)
            CHECK(double(pass_bytes(s0, s1 + 1)) > budget);  // maximal
        }
        if (budget >= double(all)) CHECK(first.size() == (both_kinds ? 3u : 2u));
      }
    }
  }
}

TEST_CASE("LRSA gather plan: gathered rows at 32K and 128K tokens (S 16, L 1024, r 0.25)", "[attn]") {
  const attn::LrsaParams p = test::lrsa_config(16, 1024, 0.25).lrsa;
  // One document of T tokens: the head sequence (S + 2L rows), then per partition q >= 2:
  // S + (q - 1) K + L + its own rows. 32K: partitions 2..31 (the last one 1008 rows).
  auto closed_form = [&](int64_t T) {
    const int64_t K = p.kept(), parts = (T - p.sink + p.lag - 1) / p.lag;  // partitions holding a row
    const int64_t seqs = parts - 2;
    return (p.sink + 2 * p.lag) + seqs * (p.sink + p.lag) + K * (seqs * (seqs + 1) / 2) + (T - p.sink - 2 * p.lag);
  };
  CHECK(gathered_rows({0, 32768}, p, 0) == 183008);
  CHECK(gathered_rows({0, 32768}, p, 0) == closed_form(32768));
  CHECK(gathered_rows({0, 131072}, p, 0) == 2310368);
  CHECK(gathered_rows({0, 131072}, p, 0) == closed_form(131072));
  // The same tokens in several documents gather far fewer rows (history restarts per document).
  CHECK(gathered_rows({0, 32768, 65536, 98304, 131072}, p, 0) == 4 * 183008);
  // Groups of 8 partitions (both directions on cuDNN): partition q >= 8 keeps (q - 8 floor(q / 8)) K rows
  // of history in its causal sequence, and each group a of 8 (a = 8, 16, ...) gathers
  // S + (a - 1) K rows once: at 32K groups 8, 16, 24.
  CHECK(gathered_rows({0, 32768}, p, 8) == 102032);
  CHECK(gathered_rows({0, 131072}, p, 8) == 615248);
  CHECK(gathered_rows({0, 524288}, p, 8) == 5617232);  // 6.1 times fewer than one sequence per partition
  CHECK(gathered_rows({0, 524288}, p, 0) == 34412768);
}

#ifdef LRSA_WITH_CUDNN
TEST_CASE("LRSA on cuDNN matches the reference as well as a naive bf16 implementation", "[attn][cuda]") {
  struct GpuCase {
    test::Problem problem;
    attn::AttentionConfig config;
  };
  const std::vector<GpuCase> cases = {
      {{{700}, 4, 2, 64, DType::BF16, 901}, test::lrsa_config(16, 128, 0.25)},
      {{{400, 130, 333}, 7, 1, 128, DType::BF16, 902}, test::lrsa_config(5, 64, 0.5, 0.5f)},
      {{{200}, 2, 2, 64, DType::BF16, 903}, test::lrsa_config(3, 128, 0.25)},
      {{{900}, 4, 2, 64, DType::BF16, 904}, test::lrsa_config(7, 100, 0.2)},  // any lag, unlike the native kernels
      {{{600}, 2, 1, 128, DType::BF16, 905}, test::lrsa_config(0, 128, 1.0, 0.0f)},
      // Enough partitions for groups of 8: two documents with grouped history.
      {{{2600, 300, 1500}, 4, 2, 64, DType::BF16, 906}, test::lrsa_config(16, 128, 0.25)},
  };
  for (const GpuCase& c : cases) {
    INFO(c.problem.str() << " S " << c.config.lrsa.sink << " L " << c.config.lrsa.lag << " K "
                         << c.config.lrsa.kept());
    const test::Inputs cpu = test::make_inputs(c.problem);
    const test::Inputs gpu = test::make_inputs(c.problem, Device::cuda(0));
    const int64_t T = test::total_tokens(c.problem), Hq = c.problem.Hq, Hk = c.problem.Hk, D = c.problem.D;
    const test::Outputs exact =
        test::from_reference(attn::attention_reference(c.config, cpu.q, cpu.k, cpu.v, cpu.layout, &cpu.dout));
    const test::Outputs baseline = test::from_reference(attn::attention_reference(
        c.config, cpu.q, cpu.k, cpu.v, cpu.layout, &cpu.dout, attn::ReferenceRounding::Bf16));
    // The default budget runs the causal virtual sequences in one cuDNN call and the grouped ones
    // in another (their outputs merged, their dQ added); the smallest budget that still takes
    // every sequence (doubling from 1 KiB) splits them into more passes, whose dK / dV sums run
    // on across the calls. A document shorter than S + 2L is one sequence: no passes.
    std::vector<attn::AttentionConfig> configs{c.config};
    if (plan_gather(gpu.layout.cu_seqlens, c.config.lrsa, cuda::kLrsaCudnnGroup).sequences() > 2) {
      attn::AttentionConfig many_passes = c.config;
      many_passes.cudnn_gather_gib = 1.0 / (1 << 20);
      while (!cuda::lrsa_cudnn_usable(gpu.layout, many_passes, Hq, Hk, D, DType::BF16) &&
             many_passes.cudnn_gather_gib < attn::kMaxCudnnGatherGib)
        many_passes.cudnn_gather_gib *= 2;
      REQUIRE(cuda::lrsa_cudnn_pass_count(gpu.layout, many_passes, Hq, Hk, D) > 2);
      configs.push_back(many_passes);
    }
    for (const attn::AttentionConfig& config : configs) {
      const int64_t passes = cuda::lrsa_cudnn_pass_count(gpu.layout, config, Hq, Hk, D);
      INFO("budget " << config.cudnn_gather_gib << " GiB: " << passes << " passes");
      REQUIRE(cuda::lrsa_cudnn_usable(gpu.layout, config, Hq, Hk, D, DType::BF16));
      if (config.cudnn_gather_gib == c.config.cudnn_gather_gib) {
        const GatherPlan plan = plan_gather(gpu.layout.cu_seqlens, c.config.lrsa, cuda::kLrsaCudnnGroup);
        CHECK(passes == (plan.causal_sequences < plan.sequences() ? 2 : 1));
      }

      attn::AttentionForward fwd;
      fwd.selection = attn::lrsa_select(gpu.k, gpu.v, gpu.layout, config.lrsa);
      fwd.out = Tensor::empty({T, Hq, D}, DType::BF16, Device::cuda(0));
      fwd.lse = Tensor::empty({Hq, T}, DType::F32, Device::cuda(0));
      cuda::lrsa_cudnn_forward(config, gpu.q, gpu.k, gpu.v, gpu.layout, fwd);
      Tensor dq = Tensor::empty({T, Hq, D}, DType::BF16, Device::cuda(0));
      Tensor dk = Tensor::empty({T, Hk, D}, DType::BF16, Device::cuda(0));
      Tensor dv = Tensor::empty({T, Hk, D}, DType::BF16, Device::cuda(0));
      cuda::lrsa_cudnn_backward(config, gpu.q, gpu.k, gpu.v, gpu.layout, fwd, gpu.dout, dq, dk, dv);
      const test::Outputs ours{fwd.out.to_doubles(), fwd.lse.to_doubles(), dq.to_doubles(), dk.to_doubles(),
                               dv.to_doubles(), fwd.selection.indices.to_ints()};
      CHECK(ours.selection == attn::lrsa_select_reference(cpu.k, cpu.v, cpu.layout, config.lrsa));
      test::check_rule(ours, baseline, exact, test::kGatheredCopiesAllowance);

      // Forward and backward as the decoder runs them: q, k, v and their gradients are views of
      // fused [T, Hq + 2 Hk, D] buffers (q's row stride is not out's), and the allocator's cache
      // holds NaN from earlier work (its buffers are never cleared), so a read of anything
      // unwritten shows. A grouped pass's dQ buffer with a contiguous layout gave NaN here.
      {
        const int64_t W = Hq + 2 * Hk;
        const auto heads = [&](Tensor& t, int64_t h0, int64_t h1) { return t.slice(1, h0, h1); };
        Tensor qkv = Tensor::empty({T, W, D}, DType::BF16, Device::cuda(0));
        Tensor fq = heads(qkv, 0, Hq), fk = heads(qkv, Hq, Hq + Hk), fv = heads(qkv, Hq + Hk, W);
        fq.copy_(gpu.q);
        fk.copy_(gpu.k);
        fv.copy_(gpu.v);
        Tensor dqkv = Tensor::empty({T, W, D}, DType::BF16, Device::cuda(0));
        Tensor fdq = heads(dqkv, 0, Hq), fdk = heads(dqkv, Hq, Hq + Hk), fdv = heads(dqkv, Hq + Hk, W);
        Tensor::full({int64_t(1) << 26}, std::nan(""), DType::F32, Device::cuda(0));  // 256 MiB, freed at once
        attn::AttentionForward ffwd;
        ffwd.selection = fwd.selection;
        ffwd.out = Tensor::empty({T, Hq, D}, DType::BF16, Device::cuda(0));
        ffwd.lse = Tensor::empty({Hq, T}, DType::F32, Device::cuda(0));
        cuda::lrsa_cudnn_forward(config, fq, fk, fv, gpu.layout, ffwd);
        cuda::lrsa_cudnn_backward(config, fq, fk, fv, gpu.layout, ffwd, gpu.dout, fdq, fdk, fdv);
        const test::Outputs fused{ffwd.out.to_doubles(), ffwd.lse.to_doubles(), fdq.contiguous().to_doubles(),
                                  fdk.contiguous().to_doubles(), fdv.contiguous().to_doubles(), ours.selection};
        INFO("fused q, k, v views, NaN in the allocator's cache");
        test::check_rule(fused, baseline, exact, test::kGatheredCopiesAllowance);
      }

      // cuDNN's dQ uses atomics: the deterministic mode is refused, not silently ignored.
      attn::AttentionConfig deterministic = config;
      deterministic.deterministic = true;
      CHECK_THROWS_WITH(
          cuda::lrsa_cudnn_backward(deterministic, gpu.q, gpu.k, gpu.v, gpu.layout, fwd, gpu.dout, dq, dk, dv),
          Catch::Contains("attention.deterministic needs the native kernels"));
    }
  }
}

TEST_CASE("LRSA on cuDNN: passes keep one call within the budget at any length", "[attn][cuda]") {
  attn::AttentionConfig c = test::lrsa_config(16, 1024, 0.25);
  const auto single = [](int64_t T) { return attn::SeqLayout::single(T); };
  const auto gib = [&](int64_t T, int64_t Hk, int64_t D) {
    return double(cuda::lrsa_cudnn_gather_bytes(single(T), c.lrsa, Hk, D)) / 1073741824.0;
  };
  // All passes' gathered buffers together, 4 x R rows x Hk x D x 2 bytes: R = 102,032 rows at
  // 32K, 1,758,288 at 256K, 5,617,232 at 512K. Groups share their history: one sequence per
  // partition would gather 183,008 / 8,816,864 / 34,412,768 rows.
  CHECK(gib(32768, 2, 64) == Approx(0.09731).epsilon(0.001));
  CHECK(gib(262144, 2, 64) == Approx(1.6768).epsilon(0.001));
  CHECK(gib(524288, 2, 64) == Approx(5.3570).epsilon(0.001));
  // The default budget (4 GiB): the 0.5B shape (14:2 x d64) in two calls at 32K (one per mask),
  // in more beyond; the 7B shape (28:4 x d128) too. f32 never.
  CHECK(c.cudnn_gather_gib == attn::kDefaultCudnnGatherGib);
  const auto passes = [&](int64_t T, int64_t Hq, int64_t Hk, int64_t D) {
    REQUIRE(cuda::lrsa_cudnn_usable(single(T), c, Hq, Hk, D, DType::BF16));
    return cuda::lrsa_cudnn_pass_count(single(T), c, Hq, Hk, D);
  };
  CHECK(passes(32768, 14, 2, 64) == 2);
  const int64_t at_256k = passes(262144, 14, 2, 64), at_512k = passes(524288, 14, 2, 64);
  CHECK(at_256k > 2);
  CHECK(at_512k > at_256k);
  CHECK(passes(131072, 28, 4, 128) > 2);
  CHECK_FALSE(cuda::lrsa_cudnn_usable(single(32768), c, 14, 2, 64, DType::F32));
  // The ceiling (16 GiB): fewer, larger calls.
  c.cudnn_gather_gib = attn::kMaxCudnnGatherGib;
  CHECK(passes(262144, 14, 2, 64) < at_256k);
  // A budget below one virtual sequence's own needs (at 32K, group 24's shared history: 5,904
  // keys for 8,176 queries, about 57 MB with its gathered rows) leaves LRSA to the native
  // kernels; a 1K document (one sequence, about 8 MB) still fits.
  c.cudnn_gather_gib = 0.01;
  CHECK_FALSE(cuda::lrsa_cudnn_usable(single(32768), c, 14, 2, 64, DType::BF16));
  CHECK(cuda::lrsa_cudnn_usable(single(1024), c, 14, 2, 64, DType::BF16));
}
#endif
