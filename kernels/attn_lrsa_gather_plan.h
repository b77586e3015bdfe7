#pragma once
// LRSA as dense causal attention over gathered keys (kernels/attn_lrsa_cudnn.cu, "gather then
// dense flash"): which keys every virtual sequence gathers, and which gathered rows hold the
// copies of every source row (the backward's reduction). Plain C++ usable on the host and in
// device code, so tests/attn/test_lrsa_cudnn_plan.cpp checks the very functions the kernels use
// against the spec's visibility rule without a GPU.
//
// Per document (positions relative to its start, N tokens):
//   head sequence:        queries [0, min(N, S + 2L)), keys the same rows (plain causal: every
//                         query before S + 2L sees every earlier key, spec "Consequences").
//   partition q >= 2:     queries = the rows of partition q, keys =
//                         [sink [0, S) | selected rows of partitions 0 .. q-2 | raw partition q-1
//                          | raw rows of partition q]
// With causal attention aligned bottom-right (query i of a sequence sees its first
// len_kv - len_q + i + 1 keys) a query of partition q sees everything before its own partition
// plus its own partition causally: exactly the spec's sink | selected history | recent window.
// Query rows of consecutive sequences are consecutive rows of q, so the sequences cover [0, T)
// in order and out/lse/dq are written in place. No sequence is empty.
//
// Partitions may be grouped (`group` m > 0; LRSA on cuDNN groups 8 in both directions): a
// 1024-query sequence gives each key block of cuDNN's backward only a few query tiles, and every
// partition would gather its whole history again, so the history the partitions of block
// b = floor(q / m) share, [sink | selected rows of partitions 0 .. bm-2], becomes one
// non-causal sequence whose queries are all rows of partitions [bm, bm + m) (when bm >= 2), and
// each of those partitions keeps a causal sequence with only the rest: [selected rows of
// bm-1 .. q-2 | raw q-1 | raw rows of q]. The two cover each visible pair once: their outputs
// merge by their log-sum-exps, their dQ add up.
// The causal sequences come first (all documents), then the grouped ones, whose query rows skip
// each document's rows before S + mL and whole short documents (explicit query starts).
//
// A gathered row is described by one i32 `source` code: >= 0 a raw absolute row (the same for
// every KV head); < 0 the compact row c = -code - 1 of the selection, i.e. absolute row
// indices[h, c] of KV head h (indices [Hk, num_parts, K] flattened per head to [num_parts * K]).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "lrsa/attn/attention.h"

#if defined(__CUDACC__)
#define LRSA_GATHER_HD __host__ __device__ __forceinline__
#else
#define LRSA_GATHER_HD inline
#endif

namespace lrsa::cuda::lrsa_gather {

// Absolute row held by a gathered row with code `code`, for the KV head whose selection row
// (indices[h], flattened) is `head_indices`.
LRSA_GATHER_HD int64_t source_row(int32_t code, const int32_t* head_indices) {
  return code >= 0 ? int64_t(code) : int64_t(head_indices[-int64_t(code) - 1]);
}

// The gathered copies of each source row, as two CSR lists over gathered rows (each list in
// ascending order): raw_first [T + 1] / raw_copies for raw codes, comp_first [num_parts * K + 1]
// / comp_copies for compact codes.
struct CopyLists {
  const int32_t* raw_first;
  const int32_t* raw_copies;
  const int32_t* comp_first;
  const int32_t* comp_copies;
};

// Index of the first of copies[lo, hi) (ascending) that is >= g.
LRSA_GATHER_HD int32_t first_copy_from(const int32_t* copies, int32_t lo, int32_t hi, int32_t g) {
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (copies[mid] < g) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Calls add(g) for every gathered row g in [g0, g1) holding source row r of a KV head, in a
// fixed order (its raw copies ascending, then its compact copies ascending): the backward's
// dK/dV of row r is the sum of dKg/dVg over all its copies, and a pass of the backward (see
// plan_passes) holds the copies of one range of gathered rows. comp_row = the compact row of r
// for this head (the inverse of the selection), or -1 when r is not selected.
template <typename Add>
LRSA_GATHER_HD void for_each_copy_in(const CopyLists& lists, int64_t r, int32_t comp_row, int32_t g0, int32_t g1,
                                     Add&& add) {
  const int32_t raw_end = lists.raw_first[r + 1];
  for (int32_t i = first_copy_from(lists.raw_copies, lists.raw_first[r], raw_end, g0);
       i < raw_end && lists.raw_copies[i] < g1; ++i)
    add(lists.raw_copies[i]);
  if (comp_row < 0) return;
  const int32_t comp_end = lists.comp_first[comp_row + 1];
  for (int32_t i = first_copy_from(lists.comp_copies, lists.comp_first[comp_row], comp_end, g0);
       i < comp_end && lists.comp_copies[i] < g1; ++i)
    add(lists.comp_copies[i]);
}

// Whether source row r of a KV head has a gathered copy in [g0, g1): the first copy from g0 in
// either list is below g1 (the reduction skips the other rows in middle passes).
LRSA_GATHER_HD bool has_copy_in(const CopyLists& lists, int64_t r, int32_t comp_row, int32_t g0, int32_t g1) {
  const int32_t raw_end = lists.raw_first[r + 1];
  const int32_t raw = first_copy_from(lists.raw_copies, lists.raw_first[r], raw_end, g0);
  if (raw < raw_end && lists.raw_copies[raw] < g1) return true;
  if (comp_row < 0) return false;
  const int32_t comp_end = lists.comp_first[comp_row + 1];
  const int32_t comp = first_copy_from(lists.comp_copies, lists.comp_first[comp_row], comp_end, g0);
  return comp < comp_end && lists.comp_copies[comp] < g1;
}

// One virtual sequence: queries [q0, q1) and its keys as four ranges in order: raw [sink0,
// sink1), compact rows [comp0, comp1), raw [raw0, q1) (the previous partition and the query
// rows themselves). The head sequence has only the last range (raw0 = q0 = document start); a
// grouped (non-causal) sequence has no raw range (raw0 = q1).
struct VirtualSeq {
  int64_t q0, q1, sink0, sink1, comp0, comp1, raw0;
  bool causal = true;
  int64_t kv_rows() const { return (sink1 - sink0) + (comp1 - comp0) + (q1 - raw0); }
};

// Calls fn(seq) for every virtual sequence of the batch: the causal ones in query-row order,
// then (group > 0, the grouping above) the grouped ones in query-row order.
template <typename Fn>
void for_each_sequence(const std::vector<int64_t>& cu_seqlens, const attn::LrsaParams& params, int64_t group, Fn&& fn) {
  const int64_t S = params.sink, L = params.lag, K = params.kept();
  // First partition of q's block when that block is grouped, else 0 (q sees its whole history).
  auto block_start = [&](int64_t q) { return group > 0 && q / group * group >= 2 ? q / group * group : 0; };
  int64_t po = 0;  // selectable partitions of the documents before this one
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    const int64_t ds = cu_seqlens[b], N = cu_seqlens[b + 1] - ds;
    const int64_t head = std::min(N, S + 2 * L);
    fn(VirtualSeq{ds, ds + head, 0, 0, 0, 0, ds});
    // Partition q >= 2 exists when it holds a row: its history partitions 0 .. q-2 are
    // selectable (their successors, up to q - 1, are complete).
    for (int64_t q = 2; S + q * L < N; ++q) {
      const int64_t from = block_start(q), sink1 = from == 0 ? ds + S : ds;
      const int64_t comp0 = (po + std::max<int64_t>(from - 1, 0)) * K;
      fn(VirtualSeq{ds + S + q * L, ds + std::min(S + (q + 1) * L, N), ds, sink1, comp0, (po + q - 1) * K,
                    ds + S + (q - 1) * L});
    }
    po += attn::selectable_partitions(N, params);
  }
  if (group <= 0) return;
  po = 0;
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    const int64_t ds = cu_seqlens[b], N = cu_seqlens[b + 1] - ds;
    for (int64_t a = std::max<int64_t>(group, (2 + group - 1) / group * group); S + a * L < N; a += group) {
      const int64_t q1 = ds + std::min(S + (a + group) * L, N);
      fn(VirtualSeq{ds + S + a * L, q1, ds, ds + S, po * K, (po + a - 1) * K, q1, false});
    }
    po += attn::selectable_partitions(N, params);
  }
}

// Gathered rows R of the whole batch (the rows of Kg / Vg).
inline int64_t gathered_rows(const std::vector<int64_t>& cu_seqlens, const attn::LrsaParams& params, int64_t group) {
  int64_t rows = 0;
  for_each_sequence(cu_seqlens, params, group, [&](const VirtualSeq& s) { rows += s.kv_rows(); });
  return rows;
}

// The plan of one (layout, S, L, K, group): what cuDNN's varlen attention and the gather /
// reduction kernels need. All i32 (rows < 2^31; the caller bounds R).
struct GatherPlan {
  std::vector<int32_t> cu_q{0}, cu_kv{0};  // [n_seq + 1]: query counts and gathered rows, cumulative
  std::vector<int32_t> q_start;            // [n_seq]: first query row of each sequence
  int64_t causal_sequences = 0;            // the first ones; the grouped rest are not causal
  std::vector<int32_t> source;                                       // [R] codes (see top)
  std::vector<int32_t> raw_first, raw_copies, comp_first, comp_copies;  // CopyLists
  int64_t rows() const { return int64_t(source.size()); }
  int64_t sequences() const { return int64_t(cu_q.size()) - 1; }
  bool causal(int64_t s) const { return s < causal_sequences; }
  int64_t q_end(int64_t s) const { return q_start[size_t(s)] + (cu_q[size_t(s) + 1] - cu_q[size_t(s)]); }
  CopyLists lists() const { return {raw_first.data(), raw_copies.data(), comp_first.data(), comp_copies.data()}; }
};

inline GatherPlan plan_gather(const std::vector<int64_t>& cu_seqlens, const attn::LrsaParams& params, int64_t group) {
  GatherPlan p;
  const int64_t T = cu_seqlens.empty() ? 0 : cu_seqlens.back();
  int64_t parts = 0;
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b)
    parts += attn::selectable_partitions(cu_seqlens[b + 1] - cu_seqlens[b], params);
  const int64_t compact_rows = parts * params.kept();
  p.source.reserve(size_t(gathered_rows(cu_seqlens, params, group)));
  for_each_sequence(cu_seqlens, params, group, [&](const VirtualSeq& s) {
    for (int64_t r = s.sink0; r < s.sink1; ++r) p.source.push_back(int32_t(r));
    for (int64_t c = s.comp0; c < s.comp1; ++c) p.source.push_back(int32_t(-c - 1));
    for (int64_t r = s.raw0; r < s.q1; ++r) p.source.push_back(int32_t(r));
    p.q_start.push_back(int32_t(s.q0));
    p.cu_q.push_back(p.cu_q.back() + int32_t(s.q1 - s.q0));
    p.cu_kv.push_back(int32_t(p.source.size()));
    p.causal_sequences += s.causal;
  });
  // Copy lists by counting sort over the codes: filled in gathered-row order, so ascending.
  p.raw_first.assign(size_t(T + 1), 0);
  p.comp_first.assign(size_t(compact_rows + 1), 0);
  for (int32_t code : p.source) ++(code >= 0 ? p.raw_first[size_t(code) + 1] : p.comp_first[size_t(-int64_t(code))]);
  for (size_t i = 1; i < p.raw_first.size(); ++i) p.raw_first[i] += p.raw_first[i - 1];
  for (size_t i = 1; i < p.comp_first.size(); ++i) p.comp_first[i] += p.comp_first[i - 1];
  p.raw_copies.resize(size_t(p.raw_first.back()));
  p.comp_copies.resize(size_t(p.comp_first.back()));
  std::vector<int32_t> raw_next(p.raw_first.begin(), p.raw_first.end() - 1);
  std::vector<int32_t> comp_next(p.comp_first.begin(), p.comp_first.end() - 1);
  for (int64_t g = 0; g < p.rows(); ++g) {
    const int32_t code = p.source[size_t(g)];
    if (code >= 0) p.raw_copies[size_t(raw_next[size_t(code)]++)] = int32_t(g);
    else p.comp_copies[size_t(comp_next[size_t(-int64_t(code) - 1)]++)] = int32_t(g);
  }
  return p;
}

// Passes: LRSA on cuDNN runs consecutive runs of virtual sequences as one cuDNN call each, so
// that one call's memory, bytes(sequences, gathered rows, longest gathered sequence, query rows
// spanned), stays within `budget` however long the batch. Greedy in sequence order; a pass never
// mixes causal and grouped sequences (one mask per call); a sequence alone over the budget
// still gets a pass (callers refuse such layouts first). Returns the first sequence of every
// pass, then plan.sequences().
template <typename Bytes>
std::vector<int64_t> plan_passes(const GatherPlan& plan, double budget, Bytes&& bytes) {
  std::vector<int64_t> first{0};
  int64_t longest = 0;
  for (int64_t s = 0; s < plan.sequences(); ++s) {
    const int64_t s0 = first.back(), kv = plan.cu_kv[size_t(s) + 1] - plan.cu_kv[size_t(s)];
    const int64_t rows = plan.cu_kv[size_t(s) + 1] - plan.cu_kv[size_t(s0)];
    const int64_t q_rows = plan.q_end(s) - plan.q_start[size_t(s0)];
    const bool new_mask = s == plan.causal_sequences;
    if (s > s0 && (new_mask || double(bytes(s + 1 - s0, rows, std::max(longest, kv), q_rows)) > budget)) {
      first.push_back(s);
      longest = kv;
    } else {
      longest = std::max(longest, kv);
    }
  }
  first.push_back(plan.sequences());
  return first;
}

}  // namespace lrsa::cuda::lrsa_gather
