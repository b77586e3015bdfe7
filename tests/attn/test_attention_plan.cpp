// The CUDA attention kernels' work plan (kernels/attn_plan.h), checked on the host: walking the
// plan exactly as the kernels do (key blocks, per-warp mask decisions, per-element masks), every
// query must meet exactly the keys the spec's visibility rule admits, once each, in the forward
// (and dQ pass) and in the backward (raw plus compacted key blocks); every raw key row is owned
// by exactly one backward block, every compact item by its own partial-sum slot of its block;
// padding is never left unmasked.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>

#include "../../kernels/attn_plan.h"
#include "attn/attn_testing.h"

using namespace lrsa;
using namespace lrsa::cuda::attn_detail;

namespace {

struct Walk {
  std::vector<std::vector<int64_t>> fwd, bwd;  // keys met by each query
  int64_t padding = 0;                        // elements outside a block left unmasked
};

// `compact_row_to_key` maps a compact row to the absolute row it holds (one KV head).
Walk walk(const WorkPlan& plan, int64_t T, const std::vector<int64_t>& compact_row_to_key) {
  Walk w;
  w.fwd.resize(size_t(T));
  w.bwd.resize(size_t(T));
  for (const FwdTile& t : plan.fwd) {
    const KeyBlocks kb(t);
    for (int n = 0; n < kb.count(); ++n) {
      const KeyBlock b = key_block(t, kb, n);
      for (int warp = 0; warp < kWarps; ++warp) {
        const int q_first = t.q0 + 16 * warp;
        const bool masked = block_needs_mask(b, q_first);
        for (int q = q_first; q < std::min(q_first + 16, t.q1); ++q)
          for (int col = 0; col < kBlockN; ++col) {
            if (masked && !block_visible(b, q, col)) continue;
            if (col >= b.rows) {
              ++w.padding;
              continue;
            }
            w.fwd[size_t(q)].push_back(b.compact ? compact_row_to_key[size_t(b.row0 + col)] : b.row0 + col);
          }
      }
    }
  }
  for (bool compact : {false, true}) {
    for (const BwdTile& t : compact ? plan.comp : plan.raw) {
      const int key_rows = t.k1 - t.k0;
      for (int qs = t.q0; qs < t.q1; qs += kBlockM) {
        const int q_rows = std::min(kBlockM, t.q1 - qs);
        for (int key0 = 0; key0 < kBlockN; key0 += 16) {
          const bool masked = bwd_needs_mask(compact, t.k0, key0, key_rows, qs, q_rows);
          for (int key = key0; key < key0 + 16; ++key)
            for (int col = 0; col < kBlockM; ++col) {
              if (masked && !bwd_visible(compact, t.k0, key, key_rows, qs, col, q_rows)) continue;
              if (key >= key_rows || col >= q_rows) {
                ++w.padding;
                continue;
              }
              w.bwd[size_t(qs + col)].push_back(compact ? compact_row_to_key[size_t(t.k0 + key)] : t.k0 + key);
            }
        }
      }
    }
  }
  return w;
}

}  // namespace

TEST_CASE("CUDA work plan: every query meets exactly its visible keys", "[attn]") {
  std::mt19937 rng(20260601);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 60; ++iter) {
    attn::AttentionConfig config =
        iter % 5 == 0 ? test::dense_config()
                      : test::lrsa_config(iter % 7 == 0 ? 0 : uniform(0, 150), 64 * uniform(1, 3),
                                          std::uniform_real_distribution<double>(0.02, 1.0)(rng));
    if (config.mode == attn::Mode::Lrsa && config.lrsa.kept() < 1) config.lrsa.ratio = 1.0;
    std::vector<int64_t> lengths;
    for (int d = uniform(1, 3); d > 0; --d) lengths.push_back(uniform(1, 900));
    const attn::SeqLayout layout = attn::SeqLayout::from_lengths(lengths);
    const std::vector<int64_t>& cu = layout.cu_seqlens;
    const int64_t T = cu.back(), S = config.lrsa.sink, L = config.lrsa.lag, K = config.lrsa.kept();
    const bool lrsa = config.mode == attn::Mode::Lrsa;
    INFO("iter " << iter << (lrsa ? " lrsa" : " dense") << " S " << S << " L " << L << " K " << K << " lengths "
                 << fmt::format("{}", fmt::join(lengths, ", ")));

    // A random selection (K sorted rows per selectable partition), in the compact order.
    std::vector<int64_t> compact_row_to_key;
    std::vector<char> selected(size_t(T), 0);
    for (size_t b = 0; lrsa && b + 1 < cu.size(); ++b) {
      for (int64_t p = 0; p < attn::selectable_partitions(cu[b + 1] - cu[b], config.lrsa); ++p) {
        std::vector<int64_t> rows(static_cast<size_t>(L));
        for (int64_t i = 0; i < L; ++i) rows[size_t(i)] = cu[b] + S + p * L + i;
        std::shuffle(rows.begin(), rows.end(), rng);
        rows.resize(size_t(K));
        std::sort(rows.begin(), rows.end());
        for (int64_t r : rows) selected[size_t(r)] = 1;
        compact_row_to_key.insert(compact_row_to_key.end(), rows.begin(), rows.end());
      }
    }
    const WorkPlan plan = plan_work(config, cu);
    const Walk w = walk(plan, T, compact_row_to_key);
    CHECK(w.padding == 0);

    std::vector<int> query_owner(size_t(T), 0), key_owner(size_t(T), 0);
    for (const FwdTile& t : plan.fwd)
      for (int q = t.q0; q < t.q1; ++q) ++query_owner[size_t(q)];
    for (const BwdTile& t : plan.raw)
      for (int k = t.k0; k < t.k1; ++k) ++key_owner[size_t(k)];
    CHECK(std::count(query_owner.begin(), query_owner.end(), 1) == T);
    CHECK(std::count(key_owner.begin(), key_owner.end(), 1) == T);

    // Partial-sum slots: each compact item writes its own slot, one of its block's, and a
    // compact row's position in its block is where the item holding it writes that row.
    const int64_t blocks = lrsa ? int64_t(compact_row_to_key.size()) / K * compact_blocks_per_part(int(K)) : 0;
    REQUIRE(int64_t(plan.slot_first.size()) == blocks + 1);
    std::vector<int> slot_owner(size_t(plan.slots()), 0);
    int64_t misplaced = 0;
    for (const BwdTile& t : plan.comp) {
      const int block = compact_block_of(t.k0, int(K));
      ++slot_owner[size_t(t.slot)];
      misplaced += t.slot < plan.slot_first[size_t(block)] || t.slot >= plan.slot_first[size_t(block) + 1];
      for (int k = t.k0; k < t.k1; ++k)
        misplaced += compact_block_of(k, int(K)) != block || compact_row_in_block(k, int(K)) != k - t.k0;
    }
    CHECK(misplaced == 0);
    CHECK(std::count(slot_owner.begin(), slot_owner.end(), 1) == plan.slots());

    int64_t wrong_fwd = 0, wrong_bwd = 0;
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
        std::vector<int64_t> want;
        for (int64_t j = cu[b]; j <= t; ++j) {
          const bool visible = !lrsa || attn::lrsa_visible(t - cu[b], j - cu[b], config.lrsa, [&](int64_t jj) {
                                 return selected[size_t(cu[b] + jj)] != 0;
                               });
          if (visible) want.push_back(j);
        }
        std::vector<int64_t> fwd = w.fwd[size_t(t)], bwd = w.bwd[size_t(t)];
        std::sort(fwd.begin(), fwd.end());
        std::sort(bwd.begin(), bwd.end());
        wrong_fwd += fwd != want;
        wrong_bwd += bwd != want;
      }
    }
    CHECK(wrong_fwd == 0);
    CHECK(wrong_bwd == 0);
  }
}

TEST_CASE("CUDA work plan: heaviest items first, partitions listed for selection", "[attn]") {
  const attn::AttentionConfig config = test::lrsa_config(16, 128, 0.25);
  const WorkPlan plan = plan_work(config, {0, 1000, 1700});
  CHECK(std::is_sorted(plan.fwd.begin(), plan.fwd.end(), [](const FwdTile& a, const FwdTile& b) { return a.work > b.work; }));
  CHECK(std::is_sorted(plan.raw.begin(), plan.raw.end(),
                       [](const BwdTile& a, const BwdTile& b) { return a.q1 - a.q0 > b.q1 - b.q0; }));
  // Documents of 1000 and 700 tokens: (1000 - 16) / 128 - 1 = 6 and (700 - 16) / 128 - 1 = 4
  // selectable partitions, starting at the sink end of each document.
  REQUIRE(plan.part_start.size() == 10);
  CHECK(plan.part_start[0] == 16);
  CHECK(plan.part_start[5] == 16 + 5 * 128);
  CHECK(plan.part_start[6] == 1000 + 16);
  // K = 32 rows: one block per partition. Queries of a partition-p block: partitions p + 2 ..;
  // chunks of ceil((selectable + 2) / kCompactChunks) = 1 partition: 1000 - 16 tokens hold 7 whole
  // partitions and 88 more rows (the 8th, partial), so p = 0 has 6 chunks, p = 5 one.
  REQUIRE(plan.slot_first.size() == 11);
  CHECK(plan.slot_first[1] - plan.slot_first[0] == 6);
  CHECK(plan.slot_first[6] - plan.slot_first[5] == 1);
}

TEST_CASE("CUDA work plan: long documents split the compact blocks' queries", "[attn]") {
  // 128K tokens, L = 1024: 126 selectable partitions; chunks of 16 partitions keep every
  // compact item at most 16K queries long, 8 items for the earliest blocks.
  const attn::AttentionConfig config = test::lrsa_config(16, 1024, 0.25);
  const WorkPlan plan = plan_work(config, {0, 131072});
  int longest = 0;
  for (const BwdTile& t : plan.comp) longest = std::max(longest, t.q1 - t.q0);
  CHECK(longest == 16 * 1024);
  CHECK(plan.slot_first[1] - plan.slot_first[0] == 8);
  CHECK(plan.slots() < 4 * 126 * 8);
}
