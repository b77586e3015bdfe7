#pragma once
// The work plan of the CUDA attention kernels (kernels/attn_*.cu): which query rows and which
// key rows every CTA handles, and which of its (query, key) elements need a per-element mask.
// Plain C++ usable on the host and in device code, so tests can check the plan against the
// spec's visibility rule without a GPU (tests/attn/test_attention_plan.cpp).
//
// Layout of one document: the sink region [0, S) (dense: empty), then [S, N) in tiles of 64
// starting at S. The CUDA path requires lag % 64 == 0, so no tile after the sink crosses a
// partition boundary and every work item sees whole ranges of keys:
//   forward / dQ-pass query tile of partition q: [sink | compacted rows of partitions 0 .. q-2
//     (one contiguous range of the per-head compact buffer) | raw partitions q-1, q, causal];
//     sink-region tiles: raw [doc start, tile), causal.
//   backward raw key block of partition p: queries [block start, end of partition p + 1);
//     sink (and dense) blocks: every later query of the document.
//   backward compacted block (<= 64 selected rows of partition p): queries of partitions >= p + 2,
//     split into at most kCompactChunks chunks of whole partitions. Early partitions' blocks are
//     seen by almost every query: unsplit, their CTAs would run long after all others finish.
//     Each chunk writes its partial dK/dV to its own slot; the raw blocks' epilogue sums a
//     row's slots in slot order (deterministic, no atomics).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "lrsa/attn/attention.h"

#if defined(__CUDACC__)
#define LRSA_ATTN_HD __host__ __device__ __forceinline__
#else
#define LRSA_ATTN_HD inline
#endif

namespace lrsa::cuda::attn_detail {

// Query rows per CTA (forward, dQ pass) and per query step (backward); keys per key step
// (forward) and per CTA (backward). Both 64: 4 warps of 16 rows.
constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = 4;
static_assert(kBlockM == 16 * kWarps && kBlockN == 16 * kWarps, "one warp owns 16 rows of a tile");

// One forward / dQ-pass work item: query rows [q0, q1) of one document, all in one region (the
// sink, or one partition), and the keys they see, as three ranges visited in order:
//   sink  [sink0, sink1)  raw rows, all visible (LRSA only; empty for dense)
//   comp  [comp0, comp1)  rows of the compact history buffer, all visible
//   raw   [raw0, q1)      raw rows, causal
// Rows are absolute rows of the packed batch; comp rows index the per-head compact buffer.
// `work` (keys per query, roughly) orders the plan.
struct alignas(16) FwdTile {
  int q0, q1, sink0, sink1, comp0, comp1, raw0, work;
};

// One backward work item: at most kBlockN keys and the queries [q0, q1) that see them. Raw
// blocks: keys are absolute rows [k0, k1), causal against the queries. Compact blocks: keys
// are compact rows [k0, k1) of one partition, seen whole by every query of the range; their
// partial dK/dV go to partial-sum slot `slot`.
struct alignas(16) BwdTile {
  int k0, k1, q0, q1, slot, unused[3];
};

// Compact key blocks are partition-aligned: a partition's K rows form ceil(K / kBlockN) blocks.
// Block id (over all partitions, in order) and row within the block of compact row ci.
constexpr int kCompactChunks = 8;
LRSA_ATTN_HD int compact_blocks_per_part(int K) { return (K + kBlockN - 1) / kBlockN; }
LRSA_ATTN_HD int compact_block_of(int ci, int K) {
  const int part = ci / K;
  return part * compact_blocks_per_part(K) + (ci - part * K) / kBlockN;
}
LRSA_ATTN_HD int compact_row_in_block(int ci, int K) { return (ci % K) % kBlockN; }

// The key blocks of a forward tile: its three ranges in blocks of kBlockN, as one sequence.
struct KeyBlocks {
  int n_sink, n_comp, n_raw;
  LRSA_ATTN_HD explicit KeyBlocks(const FwdTile& t)
      : n_sink((t.sink1 - t.sink0 + kBlockN - 1) / kBlockN),
        n_comp((t.comp1 - t.comp0 + kBlockN - 1) / kBlockN),
        n_raw((t.q1 - t.raw0 + kBlockN - 1) / kBlockN) {}
  LRSA_ATTN_HD int count() const { return n_sink + n_comp + n_raw; }
};

// Key block n: compact or raw rows starting at row0 (raw: the absolute row of the first key,
// which the causal mask compares against query rows), of which `rows` are valid.
struct KeyBlock {
  bool compact;
  int row0, rows;
};

LRSA_ATTN_HD KeyBlock key_block(const FwdTile& t, const KeyBlocks& kb, int n) {
  KeyBlock b;
  if (n >= kb.n_sink && n < kb.n_sink + kb.n_comp) {
    b.compact = true;
    b.row0 = t.comp0 + (n - kb.n_sink) * kBlockN;
    b.rows = t.comp1 - b.row0;
  } else {
    const bool sink = n < kb.n_sink;
    b.compact = false;
    b.row0 = sink ? t.sink0 + n * kBlockN : t.raw0 + (n - kb.n_sink - kb.n_comp) * kBlockN;
    b.rows = (sink ? t.sink1 : t.q1) - b.row0;
  }
  if (b.rows > kBlockN) b.rows = kBlockN;
  return b;
}

// Does key block b need the per-element mask against the 16 query rows starting at q_first?
// Partial blocks do (rows past the end are padding), and raw blocks reaching past q_first (the
// causal diagonal). Full blocks of the sink, of the compacted history, and raw blocks wholly
// before the queries are visible as a whole.
LRSA_ATTN_HD bool block_needs_mask(const KeyBlock& b, int q_first) {
  return b.rows < kBlockN || (!b.compact && b.row0 + b.rows - 1 > q_first);
}
// Element (query row q, key column col) of key block b.
LRSA_ATTN_HD bool block_visible(const KeyBlock& b, int q, int col) {
  return col < b.rows && (b.compact || b.row0 + col <= q);
}

// The same two questions in the backward, for the 16 keys starting at key0 of a block of
// key_rows keys (raw: first absolute row k0) against q_rows query rows starting at row qs.
LRSA_ATTN_HD bool bwd_needs_mask(bool compact, int k0, int key0, int key_rows, int qs, int q_rows) {
  return key_rows < kBlockN || q_rows < kBlockM || (!compact && k0 + key0 + 15 > qs);
}
LRSA_ATTN_HD bool bwd_visible(bool compact, int k0, int key, int key_rows, int qs, int col, int q_rows) {
  return key < key_rows && col < q_rows && (compact || k0 + key <= qs + col);
}

// The work items of one call: forward / dQ-pass query tiles, backward raw and compacted key
// blocks (each list heaviest first: the grid runs in order, so long items do not trail at the
// end), the first row of each selectable partition (selection), and the partial-sum slots of
// the compact blocks: block b owns slots [slot_first[b], slot_first[b + 1]).
struct WorkPlan {
  std::vector<FwdTile> fwd;
  std::vector<BwdTile> raw, comp;
  std::vector<int> part_start;
  std::vector<int> slot_first{0};
  int slots() const { return slot_first.back(); }
};

inline WorkPlan plan_work(const attn::AttentionConfig& config, const std::vector<int64_t>& cu_seqlens) {
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  const int64_t S = lrsa ? config.lrsa.sink : 0, L = config.lrsa.lag, K = lrsa ? config.lrsa.kept() : 0;
  auto i32 = [](int64_t x) { return int(x); };  // rows < 2^31 (SeqLayout::validate)
  WorkPlan w;
  int64_t po = 0;  // selectable partitions of the documents before this one
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    const int64_t ds = cu_seqlens[b], N = cu_seqlens[b + 1] - ds;
    const int64_t split = lrsa ? std::min(S, N) : 0;
    auto query_tile = [&](int64_t m0, int64_t end) {
      FwdTile t{i32(ds + m0), i32(ds + std::min(m0 + kBlockM, end)), 0, 0, 0, 0, i32(ds), 0};
      if (lrsa && m0 >= split) {
        const int64_t part = (m0 - S) / L;
        t.sink0 = i32(ds);
        t.sink1 = i32(ds + S);
        if (part >= 2) {
          t.comp0 = i32(po * K);
          t.comp1 = i32((po + part - 1) * K);
        }
        t.raw0 = i32(ds + S + std::max<int64_t>(part - 1, 0) * L);
      }
      t.work = (t.sink1 - t.sink0) + (t.comp1 - t.comp0) + (t.q1 - t.raw0);
      w.fwd.push_back(t);
    };
    for (int64_t m0 = 0; m0 < split; m0 += kBlockM) query_tile(m0, split);
    for (int64_t m0 = split; m0 < N; m0 += kBlockM) query_tile(m0, N);
    for (int64_t j0 = 0; j0 < split; j0 += kBlockN)
      w.raw.push_back({i32(ds + j0), i32(ds + std::min(j0 + kBlockN, split)), i32(ds + j0), i32(ds + N), 0, {0, 0, 0}});
    for (int64_t j0 = split; j0 < N; j0 += kBlockN) {
      const int64_t q_end = lrsa ? std::min(S + ((j0 - S) / L + 2) * L, N) : N;
      w.raw.push_back({i32(ds + j0), i32(ds + std::min(j0 + kBlockN, N)), i32(ds + j0), i32(ds + q_end), 0, {0, 0, 0}});
    }
    const int64_t parts = lrsa ? attn::selectable_partitions(N, config.lrsa) : 0;
    const int64_t chunk = L * std::max<int64_t>(1, (parts + 2 + kCompactChunks - 1) / kCompactChunks);
    for (int64_t p = 0; p < parts; ++p) {
      w.part_start.push_back(i32(ds + S + p * L));
      for (int64_t i0 = 0; i0 < K; i0 += kBlockN) {
        int slot = w.slot_first.back();
        for (int64_t a = S + (p + 2) * L; a < N; a += chunk)
          w.comp.push_back({i32((po + p) * K + i0), i32((po + p) * K + std::min(i0 + kBlockN, K)), i32(ds + a),
                            i32(ds + std::min(a + chunk, N)), slot++, {0, 0, 0}});
        w.slot_first.push_back(slot);
      }
    }
    po += parts;
  }
  std::stable_sort(w.fwd.begin(), w.fwd.end(), [](const FwdTile& a, const FwdTile& b) { return a.work > b.work; });
  auto by_queries = [](const BwdTile& a, const BwdTile& b) { return a.q1 - a.q0 > b.q1 - b.q0; };
  std::stable_sort(w.raw.begin(), w.raw.end(), by_queries);
  std::stable_sort(w.comp.begin(), w.comp.end(), by_queries);
  return w;
}

}  // namespace lrsa::cuda::attn_detail
