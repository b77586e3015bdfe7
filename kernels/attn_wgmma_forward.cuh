// kernels/attn_wgmma_forward.cuh: the attention forward on wgmma + TMA (sm_90a), head dim 64 or
// 128, dense causal and LRSA (key-tile lists over [sink | compacted history] and the raw window)
// over packed documents; dev/wgmma_attn_fwd.cu checks every variant against double and times it.
//
// A CTA owns 64 query rows per consumer warpgroup (1 to 3 of them) of one head, plus one producer
// warp (or warpgroup) whose first lane streams the key/value tiles (128 rows each) through a ring
// of shared-memory stages with TMA (128B swizzle, so wgmma reads them through descriptors); full/empty mbarriers pace
// the ring. S = Q K^T is one m64n128 wgmma batch per warpgroup, the online softmax runs on its
// accumulator registers, and P goes straight from them into the A operand of O += P V (m64 x head
// dim, V MN-major). A row of 64 columns (128 bytes) is one 128B swizzle atom: a d128 tile is two
// atoms, each rows x 128 bytes, one after the other (TMA loads them as two boxes). The variants:
//   consumers: 1 (two CTAs per SM), 2 or 3 warpgroups per CTA (d128: 2);
//   stages:    the depth of the K/V ring;
//   overlap:   S of tile j is issued together with P V of tile j-1, so the softmax of tile j runs
//              while the tensor cores still work on tile j-1 (FlashAttention-3's intra-warpgroup
//              pipelining);
//   pingpong:  (with overlap) the warpgroups take turns to issue their GEMM batches, so that one's
//              softmax (its exponentials take as many SM cycles as its GEMMs at d64) runs while
//              the other's GEMMs hold the tensor cores. The turn passes as soon as a batch is
//              issued, so the next batch queues behind it (passing it once the batch completed
//              measured 5% slower).
#pragma once
#include <algorithm>
#include <vector>

#include "attn_wgmma.cuh"

namespace lrsa::cuda::wgmma::fwd {

constexpr int kBlockN = kGridRows;            // keys per tile
constexpr int kKeyAtomBytes = kBlockN * 128;  // 16 KB: one swizzle atom of a K or V tile

template <int kHeadDim, int kConsumers, bool kOverlap, bool kPingPong, int kStages>
struct Config {
  static_assert(kHeadDim == 64 || (kHeadDim == 128 && kConsumers == 2),
                "the wgmma forward takes head dim 64 (1 to 3 consumers) or 128 (2 consumers)");
  static constexpr int kAtoms = kHeadDim / 64;
  static constexpr int kBlockM = 64 * kConsumers;  // query rows per CTA
  // Three consumers at d64 (FlashAttention-3's tile, 192 rows) take a whole producer warpgroup, so
  // that setmaxnreg can move its registers to them: a 416-thread CTA gets 126 per thread, and a
  // step needs ~165. So do two at d128, whose overlap needs ~196 (the output and S take 64 each, P
  // 32): a CTA of more than 8 warps puts 3 on some SM sub-partition, which gives each 168. Fewer
  // consumers at d64 make do with a producer warp.
  static constexpr bool kProducerWarpgroup = kConsumers == 3 || kHeadDim == 128;
  static constexpr int kThreads = 128 * kConsumers + (kProducerWarpgroup ? 128 : 32);
  static constexpr int kProducerRegisters = kHeadDim == 64 ? 32 : 24;  // d128: 16 bytes spilled, a few accesses an item
  static constexpr int kConsumerRegisters = kHeadDim == 64 ? 160 : 240;
  static_assert(!kProducerWarpgroup || setmaxnreg_fits<kProducerRegisters, kConsumers, kConsumerRegisters>,
                "setmaxnreg cannot hand out more registers than the CTA was launched with");
  static constexpr int kTileBytes = kAtoms * kKeyAtomBytes;  // one K or V tile: 16 / 32 KB
  static constexpr int kQAtomBytes = kBlockM * 128;
  static constexpr int kQBytes = kAtoms * kQAtomBytes;
  // Q, then the K stages, then the V stages (all 1024-byte aligned), then the mbarriers (full and
  // empty per stage, Q's full and empty, the item ring's full and empty per slot), then the item
  // ring's two slots.
  static constexpr int kBarrierOffset = kQBytes + 2 * kStages * kTileBytes;
  static constexpr int kItemSlotOffset = kBarrierOffset + 8 * (2 * kStages + 6);
  static constexpr int kSmemBytes = kItemSlotOffset + 8 + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "more shared memory than an sm_90 CTA may take");
};

// A set of a plan's tiles (TilePlan, below): the compacted tiles [0, compacted) and the raw tiles
// [raw_first, raw_end). A warpgroup computes its seen and whole ones once: the visible intervals grow
// with the row, so its first and last rows bound every row's, and each set is contiguous. (Asking per
// tile put two partition() evaluations, ~40 instructions, between each tile's S and its softmax.)
struct TileSet {
  int compacted, raw_first, raw_end;
  __host__ __device__ bool operator()(int i) const { return i < compacted || (i >= raw_first && i < raw_end); }
};

// The key tiles of the query rows [first, last] (first may precede the document: Lrsa::shift):
// compacted tiles first, then raw tiles from the earliest raw key any of the rows sees, rounded down
// to the tile grid so that the diagonal is one tile of a 128-row CTA (a masked tile costs twice a
// whole one). Both sides derive it alike.
struct TilePlan {
  int compacted_tiles, raw_start, tiles;
  __host__ __device__ TilePlan(const Lrsa& lrsa, int first, int last) {
    compacted_tiles = (lrsa.compacted_end(last) + kBlockN - 1) / kBlockN;
    // raw_begin grows with t past the sinks
    raw_start = (lrsa.raw_begin(max(first, lrsa.sink)) + lrsa.shift) / kBlockN * kBlockN - lrsa.shift;
    tiles = compacted_tiles + max(last + 1 - raw_start + kBlockN - 1, 0) / kBlockN;
  }
  __host__ __device__ bool compacted(int i) const { return i < compacted_tiles; }
  __host__ __device__ int start(int i) const {
    return compacted(i) ? i * kBlockN : raw_start + (i - compacted_tiles) * kBlockN;
  }
  // The columns [x, y) of tile i that row `row` sees, counted from the tile's first key, given the
  // row's compacted_end and raw_begin (the kernel keeps them in registers).
  __host__ __device__ int2 columns(int i, int row, int compacted_end, int raw_begin) const {
    const int first = start(i);
    return compacted(i) ? int2{-first, compacted_end - first} : int2{raw_begin - first, row + 1 - first};
  }
  // The tiles every row of [first_row, last_row] sees whole: a compacted tile below the first row's
  // compacted_end, a raw tile from the last row's raw_begin on and ending by the first row. The
  // rest are masked.
  __host__ __device__ TileSet whole(const Lrsa& lrsa, int first_row, int last_row) const {
    const int raw_tiles = tiles - compacted_tiles, below = lrsa.raw_begin(last_row) - raw_start;
    const int compacted = min(max(lrsa.compacted_end(first_row), 0) / kBlockN, compacted_tiles);
    const int raw_first = min((max(below, 0) + kBlockN - 1) / kBlockN, raw_tiles);
    const int ends_by = first_row + 1 - kBlockN - raw_start;  // a raw tile starting by here ends by the first row
    const int raw_end = ends_by < 0 ? 0 : min(ends_by / kBlockN + 1, raw_tiles);
    return {compacted, compacted_tiles + raw_first, compacted_tiles + max(raw_end, raw_first)};
  }
  // The tiles some row of [first_row, last_row] sees: not those the last row's interval ends before
  // or the first row's begins after (else the row max(first row, tile start, S) sees it; the dev
  // harness checks that no seen pair is left out).
  __host__ __device__ TileSet seen(const Lrsa& lrsa, int first_row, int last_row) const {
    if (first_row > last_row) return {0, 0, 0};
    const int raw_tiles = tiles - compacted_tiles;
    const int compacted = min(max((lrsa.compacted_end(last_row) + kBlockN - 1) / kBlockN, 0), compacted_tiles);
    const int raw_first = min(max(lrsa.raw_begin(first_row) - raw_start, 0) / kBlockN, raw_tiles);
    const int raw_end = last_row < raw_start ? 0 : min((last_row - raw_start) / kBlockN + 1, raw_tiles);
    return {compacted, compacted_tiles + raw_first, compacted_tiles + max(raw_end, raw_first)};
  }
};

// The persistent forward's work items, query tiles x heads, and the counter its CTAs take the items
// past their first from. The counter is zero before a launch, and the kernel leaves it zero: each
// item started fetches one ticket, so a launch takes `count` of them, and the last one resets it.
struct ForwardItems {
  int count;
  int* next;
  __device__ int fetch(int ctas) const {
    const int ticket = atomicAdd(next, 1);
    if (ticket == count - 1) atomicExch(next, 0);
    return ctas + ticket;
  }
};

// A query tile: rows [64 * consumers * m_block - Lrsa::shift, + 64 * consumers) of the document of
// `length` rows from row `begin` of the packed batch (a document's first tile may start before the
// document, on the tile grid; those rows are neither computed for nor stored), whose compacted rows start
// at row `compacted_begin` of ck/cv. The plan and the masks work in positions within the document.
struct QueryTile {
  int begin, length, compacted_begin, m_block;
};

// q: [T, Hq, D], k, v: [T, Hk, D], o: [T, Hq, D] bf16, D = kHeadDim (the inputs through their
// tensor maps); lse: [Hq, T] f32 (natural log). Persistent: each CTA takes work items (query tile,
// head) until none are left, item w being tile w / Hq of `tiles` (the longest first) and head w % Hq.
// Its first item is its blockIdx.x, the next ones come from *next_item (ForwardItems); the grid is
// as many CTAs as the device holds at once, at most one per item. The producer
// fetches them and hands them to the consumers through a two-slot ring; the K/V ring runs on across
// items, and the next item's Q loads as soon as every consumer's last Q K^T has completed, so that a
// CTA's start (Q and the first K/V tile in flight) and its finish (the last P V, the stores) overlap
// its neighbours' work instead of leaving the SM idle between CTAs (LRSA's query tiles see a third of
// dense's key tiles, so that fixed cost weighs three times as much).
// Accumulator register i of an m64nN tile holds row 16 * warp + group + 8 * ((i / 2) % 2) and column
// 8 * (i / 4) + 2 * quad + (i % 2) (warp within the warpgroup, group = lane / 4, quad = lane % 4): each
// thread holds two rows, a quad holds them whole. With one consumer warpgroup, two CTAs share an SM
// and interleave on their own.
template <int kHeadDim, int kConsumers, bool kOverlap, bool kPingPong, int kStages>
__global__ void __launch_bounds__(Config<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>::kThreads,
                                  kConsumers == 1 ? 2 : 1)
    attn_fwd_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                    const __grid_constant__ CUtensorMap v_map, const __grid_constant__ CUtensorMap ck_map,
                    const __grid_constant__ CUtensorMap cv_map, Lrsa lrsa, const QueryTile* tiles, ForwardItems items,
                    __nv_bfloat16* o, int64_t o_stride, float* lse, int total_rows, int Hq, int Hk, float scale,
                    CtaSpan* spans) {
  using C = Config<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
  constexpr int kTileBytes = C::kTileBytes;
  extern __shared__ unsigned char smem[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023) & ~1023u;
  const uint32_t q_tile = base, k_tiles = base + C::kQBytes, v_tiles = k_tiles + kStages * kTileBytes;
  const uint32_t full = base + C::kBarrierOffset, empty = full + 8 * kStages, q_full = empty + 8 * kStages;
  const uint32_t q_empty = q_full + 8, item_full = q_empty + 8, item_empty = item_full + 16;
  volatile int* item_slot =
      reinterpret_cast<volatile int*>(smem + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem))) +
                                      C::kItemSlotOffset);
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(full + 8 * s, 1);                // the producer's expect_tx
      mbarrier_init(empty + 8 * s, 4 * kConsumers);  // lane 0 of every consumer warp
    }
    mbarrier_init(q_full, 1);
    mbarrier_init(q_empty, 4 * kConsumers);
    for (int s = 0; s < 2; ++s) {
      mbarrier_init(item_full + 8 * s, 1);
      mbarrier_init(item_empty + 8 * s, 4 * kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  // The parity of item n's use of its slot (n % 2) of the item ring.
  auto item_phase = [](int n) { return uint32_t((n / 2) & 1); };

  if (warpgroup == kConsumers) {  // the producer: its first thread fetches every item and issues every copy
    if constexpr (C::kProducerWarpgroup)
      setmaxnreg_dec<C::kProducerRegisters>();
    if (threadIdx.x == 128 * kConsumers) {
      int tile_count = 0;  // K/V tiles issued so far, over all items: the ring's position
      for (int n = 0, w = blockIdx.x;; ++n) {
        if (n >= 2) mbarrier_wait(item_empty + 8 * (n % 2), item_phase(n) ^ 1);
        item_slot[n % 2] = w;
        mbarrier_arrive(item_full + 8 * (n % 2));  // releases the slot's write to the waiting consumers
        if (w >= items.count) break;
        const int next = items.fetch(gridDim.x);  // early: its latency hides behind this item's copies
        const QueryTile work = tiles[w / Hq];
        const int head = w % Hq, kv_head = head / (Hq / Hk);
        const int row_begin = work.m_block * C::kBlockM - lrsa.shift;
        const TilePlan plan(lrsa, row_begin, min(row_begin + C::kBlockM, work.length) - 1);
        for (int j = 0; j < plan.tiles; ++j, ++tile_count) {
          const int stage = tile_count % kStages;
          if (tile_count >= kStages) mbarrier_wait(empty + 8 * stage, ((tile_count / kStages) & 1) ^ 1);
          const uint32_t bar = full + 8 * stage;
          const bool compacted = plan.compacted(j);
          mbarrier_expect_bytes(bar, 2 * kTileBytes);
          const int row = (compacted ? work.compacted_begin : work.begin) + plan.start(j);
          for (int a = 0; a < C::kAtoms; ++a) {
            const uint32_t atom = stage * kTileBytes + a * kKeyAtomBytes;
            tma_load(k_tiles + atom, compacted ? &ck_map : &k_map, bar, 64 * a, kv_head, row);
            tma_load(v_tiles + atom, compacted ? &cv_map : &v_map, bar, 64 * a, kv_head, row);
          }
          if (j == 0) {  // Q after the first K/V tile: the previous item's last Q K^T may still run
            if (n > 0) mbarrier_wait(q_empty, (n - 1) & 1);
            mbarrier_expect_bytes(q_full, C::kQBytes);
            for (int a = 0; a < C::kAtoms; ++a)
              tma_load(q_tile + a * C::kQAtomBytes, &q_map, q_full, 64 * a, head, work.begin + row_begin);
          }
        }
        w = next;
      }
    }
    return;
  }

  if constexpr (C::kProducerWarpgroup)
    setmaxnreg_inc<C::kConsumerRegisters>();
  const int t = threadIdx.x % 128, warp = t / 32, group = (t % 32) / 4, quad = t % 4;
  const float scale_log2 = scale * kLog2e;
  constexpr int kOutRegisters = kHeadDim / 2;  // of the m64 x head dim output
  float out[kOutRegisters];
  uint32_t p[8][4];  // P of the tile whose P V is next, as the bf16 A operand

  // Ping-pong: warpgroup g issues its GEMMs after barrier 1 + g, then lets the next one go. The turns
  // run on across items (every warpgroup takes as many per item), so the last warpgroup passes the
  // first turn once, here, and warpgroup 0 takes the final one once, after the last item.
  static_assert(!kPingPong || (kOverlap && kConsumers >= 2), "ping-pong alternates overlapped warpgroups");
  const int next_consumer = (warpgroup + 1) % kConsumers;
  auto my_turn = [&] {
    if (kPingPong) named_barrier_sync(1 + warpgroup, 256);
  };
  auto your_turn = [&] {
    if (kPingPong) named_barrier_arrive(1 + next_consumer, 256);
  };
  if (warpgroup == kConsumers - 1) your_turn();  // warpgroup 0 goes first
  auto warp_arrive = [&](uint32_t bar) {  // every consumer warp's lane 0: the barriers count 4 per warpgroup
    if (t % 32 == 0) mbarrier_arrive(bar);
  };

  int tile_count = 0;  // K/V tiles consumed before this item, as the producer counts them
  for (int n = 0;; ++n) {
    mbarrier_wait(item_full + 8 * (n % 2), item_phase(n));
    // From lane 0, so that the compiler knows it is the same in every lane: the tile loop's counter and
    // the wgmma descriptors derived from it must be uniform.
    const int w = __shfl_sync(0xffffffff, item_slot[n % 2], 0);
    warp_arrive(item_empty + 8 * (n % 2));  // the shuffle has read the slot for the whole warp
    if (w >= items.count) break;
    const uint64_t began = spans ? global_ns() : 0;
    const QueryTile work = tiles[w / Hq];
    const int T = work.length;
    const int head = w % Hq;
    const int row_begin = work.m_block * C::kBlockM - lrsa.shift;  // a position; the first document's: zeros before it
    const TilePlan plan(lrsa, row_begin, min(row_begin + C::kBlockM, T) - 1);
    const int n_blocks = __shfl_sync(0xffffffff, plan.tiles, 0);  // uniform, as w: so is tile_count, which adds it up
    const int wg_row = row_begin + warpgroup * 64;
    const int row0 = wg_row + 16 * warp + group;  // and row0 + 8
    const int wg_last = min(wg_row + 63, T - 1);
    // This thread's rows' visible intervals: compacted [0, compacted_end), raw [raw_begin, row].
    const int compacted_end[2] = {lrsa.compacted_end(row0), lrsa.compacted_end(row0 + 8)};
    const int raw_begin[2] = {lrsa.raw_begin(row0), lrsa.raw_begin(row0 + 8)};
    // This warpgroup's seen and whole tiles (uniform, as w).
    auto uniform = [](TileSet set) {
      return TileSet{__shfl_sync(0xffffffff, set.compacted, 0), __shfl_sync(0xffffffff, set.raw_first, 0),
                     __shfl_sync(0xffffffff, set.raw_end, 0)};
    };
    const TileSet seen = uniform(plan.seen(lrsa, wg_row, wg_last)), whole = uniform(plan.whole(lrsa, wg_row, wg_last));
    const uint32_t q_wg = __shfl_sync(0xffffffff, q_tile + warpgroup * 64 * 128, 0);  // uniform, as w
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    int masked_tiles = 0;
#pragma unroll
    for (int i = 0; i < kOutRegisters; ++i) out[i] = 0.0f;

    // Tile j of this item in the K/V ring.
    auto full_of = [&](int j) { return full + 8 * ((tile_count + j) % kStages); };
    auto full_phase = [&](int j) { return uint32_t(((tile_count + j) / kStages) & 1); };
    auto stage_bytes = [&](int j) { return uint32_t((tile_count + j) % kStages) * kTileBytes; };
    auto release = [&](int j) {  // tile j's K and V are read by finished wgmmas only
      warp_arrive(empty + 8 * ((tile_count + j) % kStages));
    };
    // A tile none of this warpgroup's rows sees is skipped: masked whole, it would leave the row
    // statistics and the output exactly as they were. A 192-row CTA spans two partitions in two
    // cases of three: rows of the earlier one see none of the later one's extra compacted tiles, rows
    // of the later one none of the oldest raw partition (32K LRSA: 2.5% of the warpgroups' tiles).
    // Without overlap only (there a tile's P V runs in its own iteration). The stage is released
    // after it filled, so that a warpgroup that skips runs at most the ring's depth ahead and never
    // arrives for a later use of the stage.
    auto skip = [&](int j) {
      if (kOverlap || seen(j)) return false;
      mbarrier_wait(full_of(j), full_phase(j));
      release(j);
      return true;
    };
    auto issue_qk = [&](int j, float (&s)[64]) {
      const uint32_t k_tile = k_tiles + stage_bytes(j);
#pragma unroll
      for (int kk = 0; kk < 4 * C::kAtoms; ++kk) {  // k16 steps: 32 bytes further into an atom's rows
        const int atom = kk / 4, column_bytes = (kk % 4) * 32;
        wgmma_ss<false>(s, descriptor(q_wg + atom * C::kQAtomBytes + column_bytes, 16, 1024),
                        descriptor(k_tile + atom * kKeyAtomBytes + column_bytes, 16, 1024), kk > 0);
      }
    };
    auto issue_pv = [&](int j) {
      const uint32_t v_tile = v_tiles + stage_bytes(j);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)  // 16 keys a step; V's column atoms kKeyAtomBytes apart
        wgmma_rs_mn(out, p[kk], descriptor(v_tile + kk * 2048, kKeyAtomBytes, 1024));
    };
    // Masks tile j, updates the row statistics and turns S into unnormalized probabilities; returns
    // each row's rescaling of the output so far.
    auto softmax = [&](int j, float (&s)[64], float (&correction)[2]) {
      if (!whole(j)) {
        ++masked_tiles;
        // Row h sees the tile's columns [begin[h], end[h]), counted from this thread's first column, so
        // that each element compares a constant.
        int begin[2], end[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int2 columns = plan.columns(j, row0 + 8 * h, compacted_end[h], raw_begin[h]);
          begin[h] = columns.x - 2 * quad;
          end[h] = columns.y - 2 * quad;
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) {
          const int col = 8 * (i / 4) + (i % 2), h = (i / 2) % 2;
          if (col < begin[h] || col >= end[h]) s[i] = -INFINITY;
        }
      }
      float new_max[2] = {row_max[0], row_max[1]}, max_scaled[2];
#pragma unroll
      for (int i = 0; i < 64; ++i) new_max[(i / 2) % 2] = fmaxf(new_max[(i / 2) % 2], s[i]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        new_max[h] = fmaxf(new_max[h], __shfl_xor_sync(0xffffffff, new_max[h], 1));
        new_max[h] = fmaxf(new_max[h], __shfl_xor_sync(0xffffffff, new_max[h], 2));
        // A row that has seen no key yet (LRSA: compacted tiles past its history) keeps max -inf.
        const float max_or_zero = new_max[h] == -INFINITY ? 0.0f : new_max[h];
        correction[h] = exp2_ftz((row_max[h] - max_or_zero) * scale_log2);  // row_max -inf: 0
        row_max[h] = new_max[h];
        row_sum[h] *= correction[h];
        max_scaled[h] = max_or_zero * scale_log2;
      }
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        s[i] = exp2_ftz(s[i] * scale_log2 - max_scaled[(i / 2) % 2]);
        row_sum[(i / 2) % 2] += s[i];
      }
    };
    auto to_p = [&](const float (&s)[64]) {
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) p[kk][r] = pack_bf16x2(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
    };
    auto pv_now = [&](int j) {  // O += P V of tile j, waited for
      fence_operands(out);
      wgmma_fence();
      issue_pv(j);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(out);
    };

    // Tile 0 alone: no P V to overlap with yet. The loop is then the same for every tile, with no
    // branch between a wgmma's issue and its wait (ptxas serializes wgmmas across divergent paths).
    mbarrier_wait(q_full, n & 1);
    uint64_t first_step = 0, last_step = 0;
    if (!skip(0)) {
      float s[64], correction[2];
      mbarrier_wait(full_of(0), full_phase(0));
      if (spans) first_step = global_ns();
      my_turn();
      wgmma_fence();
      issue_qk(0, s);
      wgmma_commit();
      wgmma_wait<0>();
      your_turn();
      fence_operands(s);
      softmax(0, s, correction);
      to_p(s);
      if (!kOverlap) {
        pv_now(0);
        release(0);
      }
    } else if (spans) {
      first_step = global_ns();
    }
    for (int j = 1; j < n_blocks; ++j) {
      if (skip(j)) continue;
      float s[64], correction[2];
      mbarrier_wait(full_of(j), full_phase(j));
      my_turn();
      fence_operands(out);
      wgmma_fence();
      issue_qk(j, s);
      wgmma_commit();
      if (kOverlap) {
        issue_pv(j - 1);
        wgmma_commit();
      }
      your_turn();
      wgmma_wait<kOverlap ? 1 : 0>();  // overlap: S is in, P V may still run under the softmax
      fence_operands(s);
      softmax(j, s, correction);
      if (kOverlap) {
        wgmma_wait<0>();
        fence_operands(out);
        fence_operands(p);
        release(j - 1);
      }
#pragma unroll
      for (int i = 0; i < kOutRegisters; ++i) out[i] *= correction[(i / 2) % 2];
      to_p(s);
      if (!kOverlap) {
        pv_now(j);
        release(j);
      }
    }
    warp_arrive(q_empty);  // every Q K^T of this item has completed: the producer may load the next Q
    if (kOverlap) {
      my_turn();
      pv_now(n_blocks - 1);
      your_turn();
      release(n_blocks - 1);
    }
    if (spans) last_step = global_ns();
    tile_count += n_blocks;

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[h] += __shfl_xor_sync(0xffffffff, row_sum[h], 1);
      row_sum[h] += __shfl_xor_sync(0xffffffff, row_sum[h], 2);
    }
#pragma unroll
    for (int i = 0; i < kOutRegisters; i += 2) {
      const int h = (i / 2) % 2, row = row0 + 8 * h, col = 8 * (i / 4) + 2 * quad;
      if (row < 0 || row >= T) continue;
      const float inv = 1.0f / row_sum[h];
      *reinterpret_cast<__nv_bfloat162*>(o + int64_t(work.begin + row) * o_stride + int64_t(head) * kHeadDim +
                                         col) = __floats2bfloat162_rn(out[i] * inv, out[i + 1] * inv);
    }
    if (quad == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (row0 + 8 * h >= 0 && row0 + 8 * h < T)
          lse[int64_t(head) * total_rows + work.begin + row0 + 8 * h] = row_max[h] * scale + logf(row_sum[h]);
    }
    if (spans) {
      named_barrier_sync(8, 128 * kConsumers);  // every consumer is done with the item
      if (threadIdx.x == 0) spans[w] = {began, first_step, last_step, global_ns(), sm_id(), n_blocks, masked_tiles};
    }
  }
  if (warpgroup == 0) my_turn();  // takes the last warpgroup's final turn signal: every barrier ends balanced
}

// The query tiles of rows_per_tile rows (64 per consumer warpgroup) over the documents
// doc_start [B + 1] (compacted rows from compacted_start [B + 1]), the longest first.
inline std::vector<QueryTile> query_tiles(const std::vector<int>& doc_start, const std::vector<int>& compacted_start,
                                          const Lrsa& lrsa, int rows_per_tile) {
  std::vector<QueryTile> tiles;
  for (size_t b = 0; b + 1 < doc_start.size(); ++b) {
    const int length = doc_start[b + 1] - doc_start[b];
    // The grid starts lrsa.shift rows before the document: from the first tile that holds one of its rows.
    for (int m = lrsa.shift / rows_per_tile; m * rows_per_tile < length + lrsa.shift; ++m)
      tiles.push_back({doc_start[b], length, compacted_start[b], m});
  }
  auto key_tiles = [&](const QueryTile& w) {
    const int first = w.m_block * rows_per_tile - lrsa.shift;
    return TilePlan(lrsa, first, std::min(first + rows_per_tile, w.length) - 1).tiles;
  };
  std::stable_sort(tiles.begin(), tiles.end(),
                   [&](const QueryTile& a, const QueryTile& b) { return key_tiles(a) > key_tiles(b); });
  return tiles;
}

}  // namespace lrsa::cuda::wgmma::fwd
