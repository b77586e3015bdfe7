// kernels/attn_wgmma_units.h: how long the wgmma attention backward's work units are (plain C++: the
// kernels, their launcher and the tests share it). A unit is one CTA's work: a run of query tiles of
// one key tile, walked for every query head of the KV head's GQA group (tiles x group steps).
#pragma once

namespace lrsa::cuda::wgmma::bwd {

// Query tiles (of 128 rows) per unit in a document of `tokens` tokens whose KV heads serve `group`
// query heads each. The fastest of 12, 24 and 48 in session 22's runs on the H200 (dev harness, 14:2
// and 32:8 x d64, S=16, L=1024, r=0.25, 1 to 16 documents; docs/benchmarks.md), units then cut into
// even pieces of each key tile's run: from 32K tokens, 48 (128K at 14:2, 46.7 ms against 57.8 with
// 12); below, about 96 steps (12 tiles at 14:2, 24 at 32:8; 64K as four documents at 14:2: 4.42 ms
// against 4.86 with 48); documents of up to 24 tiles keep each key tile's run whole (2K-token
// documents at 14:2: 0.955 ms against 0.995 with 12). Since the runs are cut at multiples of the
// unit (work_units), 24 from 32K (session 28, lrsa-bench at 32K, both cut at multiples: LRSA forward
// + backward 1.1% less time than with 48 at d128, 0.7% at d64).
constexpr int unit_query_tiles(int tokens, int group) {
  if (tokens >= 32768) return 24;
  const int by_steps = 96 / group >= 48 ? 48 : 96 / group >= 24 ? 24 : 12;
  return tokens <= 24 * 128 && by_steps < 24 ? 24 : by_steps;
}

}  // namespace lrsa::cuda::wgmma::bwd
