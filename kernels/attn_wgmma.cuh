// kernels/attn_wgmma.cuh: what the Hopper (wgmma + TMA) attention kernels share: the tile grid and
// LRSA's visibility as intervals (../shared/lrsa-spec.md). The forward and backward are in
// attn_wgmma_forward.cuh and attn_wgmma_backward.cuh; dev/ checks and times them.
#pragma once
#include "hopper.cuh"

namespace lrsa::cuda::wgmma {

using namespace hopper;

constexpr int kGridRows = 128;  // the kernels' key tiles, and the backward's query tiles
constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = 2^(x log2 e): the kernels take exp2

// Which keys a query row sees, as two intervals (../shared/lrsa-spec.md, "Visibility"): compacted rows
// [0, compacted_end) of [sink | Sel(0) | Sel(1) | ...], and raw positions [raw_begin, t]. Dense causal
// attention is lag 0: no compacted rows, raw [0, t].
//
// The tiles of raw keys and of queries (the backward's 128-row ones; the forward's CTAs start on the
// same grid) lie on a grid of kGridRows rows that starts `shift` rows before each document (the rows
// before it are another document's or outside the tensor, and no row sees them). With a lag that is
// a multiple of kGridRows, shift = -S mod kGridRows starts every partition on a tile: no tile then
// holds the end of one partition and the start of the next, whose keys have different viewers (32K
// tokens, S = 16, L = 1024: 2.2% fewer backward steps, 45% fewer masked ones).
struct Lrsa {
  int sink, lag, keep;  // S, L, K; lag 0: dense causal
  float inverse_lag;    // 1 / L: partition() runs per row and tile, and an integer division costs ~20 instructions
  int shift;            // position t is row t + shift of its document's tile grid
  Lrsa(int sink, int lag, int keep)
      : sink(sink),
        lag(lag),
        keep(keep),
        inverse_lag(lag ? 1.0f / float(lag) : 0.0f),
        shift(lag > 0 && lag % kGridRows == 0 ? (kGridRows - sink % kGridRows) % kGridRows : 0) {}
  // floor((t - S) / L) for t >= S: the float quotient is off by at most one for t < 2^24; the compares fix it.
  __host__ __device__ int partition(int t) const {
    int part = int(float(t - sink) * inverse_lag);
    if (sink + part * lag > t) --part;
    if (sink + (part + 1) * lag <= t) ++part;
    return part;
  }
  __host__ __device__ int compacted_end(int t) const {
    if (lag == 0) return 0;
    return t < sink ? t + 1 : sink + keep * max(partition(t) - 1, 0);
  }
  __host__ __device__ int raw_begin(int t) const {  // t < S: past t, so nothing raw
    if (lag == 0) return 0;
    return t < sink ? t + 1 : sink + lag * max(partition(t) - 1, 0);
  }
  // Tiles of the grid over a document of n rows.
  __host__ __device__ int grid_tiles(int n) const { return (n + shift + kGridRows - 1) / kGridRows; }
};

}  // namespace lrsa::cuda::wgmma
