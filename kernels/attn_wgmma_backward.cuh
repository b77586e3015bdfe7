// kernels/attn_wgmma_backward.cuh: the attention backward on wgmma + TMA (sm_90a), head dim 64 or
// 128, dense causal and LRSA over packed documents, with the kernels around it (dQ's rounding, the
// compacted rows' dK/dV added to their positions; D = rowsum(dO O) is attn_delta.cuh's) and its
// work plan; dev/wgmma_attn_bwd.cu checks it against double and times it.
//
// A CTA owns one tile of 128 keys of one KV head: each of its two warpgroups holds 64 of the keys and
// their dK and dV accumulators in registers, while it walks every query tile that sees the keys, for
// every query head of the GQA group, in steps of 128 queries (d64) or 64 (d128: half a tile, as dK
// and dV take twice the registers; Shape). Thread 0 streams Q, dO, lse and D (= rowsum dO * O) per
// step through a ring of stages with TMA (a stage is refilled after the barrier in the middle of the
// next step, no mbarrier of its own: see Smem); at d128 a producer warpgroup does (DqMode::kWriter).
// Per step, warpgroup w (keys 64w..64w+63):
//   S^T  = K_w Q^T,  dP^T = V_w dO^T          (m64 x step queries, both operands from shared memory)
//   P^T  = exp(S^T - lse),  dS^T = P^T (dP^T - D)   (in registers; the 1 / sqrt(d) of dS
//                                                   goes on dK at the end and on dQ when rounded)
//   dV_w += P^T dO,  dK_w += dS^T Q           (m64 x head dim, A from registers, B MN-major)
//   dS^T goes to shared memory (stmatrix); after a barrier between the two warpgroups, one 64 x 64
//   tile of dQ = dS K per warpgroup (d64: its 64 of the 128 queries; d128: its 64 of the 128 columns;
//   A and B MN-major from shared memory), issued before dK's GEMM. dQ is added into fp32 sums (a
//   last kernel rounds them to bf16): at d64 it stays in registers until the next step has issued
//   its S^T and dP^T GEMMs, and 16-byte reductions to global memory add it while they run; at d128
//   it is staged in shared memory while dK's GEMM runs, and the producer's writer warp adds it with
//   one bulk reduce-add (DqMode).
// LRSA: the CTAs own either tiles of raw keys (seen by the queries whose window reaches them) or
// tiles of the compacted rows [sink | Sel(0) | ...] (seen by every later query), split into units of
// 12, 24 or 48 query tiles (unit_query_tiles, by document length and GQA group); a last kernel adds
// each position's compacted-row gradient to its raw one.
#pragma once
#include <algorithm>
#include <climits>
#include <optional>
#include <type_traits>
#include <vector>

#include "attn_delta.cuh"
#include "attn_wgmma.cuh"
#include "attn_wgmma_units.h"

namespace lrsa::cuda::wgmma::bwd {

constexpr int kBlock = kGridRows;  // keys per CTA, rows per query tile: the tile grid

// The kernel's shape at head dim kHeadDim. A warpgroup's dK and dV take kHeadDim / 2 registers each
// and a step's S^T and dP^T half its query rows each, so a step walks 128 queries at d64 and 64 at
// d128 (half a query tile): 224 accumulator registers either way, with dQ's. Rows of 64 columns (128
// bytes) are one 128B swizzle atom; a d128 tile is two atoms, each rows x 128 bytes, one after the
// other (TMA loads them as two boxes).
template <int kHeadDim>
struct Shape {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the wgmma backward takes head dim 64 or 128");
  static constexpr int kAtoms = kHeadDim / 64;
  static constexpr int kStepRows = kHeadDim == 64 ? 128 : 64;  // queries per step
  static constexpr int kSteps = kBlock / kStepRows;            // steps per query tile
  static constexpr int kKeyAtomBytes = kBlock * 128;           // of a K or V tile
  static constexpr int kStepAtomBytes = kStepRows * 128;       // of a step's Q or dO
  static constexpr int kKeyBytes = kAtoms * kKeyAtomBytes;     // 16 / 32 KB
  static constexpr int kStepBytes = kAtoms * kStepAtomBytes;   // 16 KB
  static constexpr int kDsBytes = kBlock * kStepRows * 2;      // dS^T: [queries / 64][128 keys][64 queries]
};

// How a step's dQ reaches the fp32 sums: kVectorReduce, training's at d64, adds each thread's
// 4-register groups with red.global.add.v4.f32 while the next step's S^T and dP^T GEMMs run;
// kSplitReduce adds half of them there and half while its dV GEMM runs; kAtomic adds register pairs
// with float2 atomics; kBulk stages the warpgroup's 64 x 64 tile in shared memory and adds it with
// one bulk reduce-add (TMA); kWriter, training's at d128, stages the step's tile while dK's GEMM
// runs, and a warp of a producer warpgroup adds it with one bulk reduce-add (the producer's first
// warp issues the loads). Staged while the next step's S^T and dP^T run instead, it needs more than
// setmaxnreg's 240 registers (ptxas: 696 bytes of spills at d128). kSkip does not add it (a bound
// for timing, not a result). dev/wgmma_attn_bwd.cu times each, and docs/benchmarks.md "Session 18"
// and "Session 25" the ways tried before.
enum class DqMode { kVectorReduce, kSplitReduce, kAtomic, kBulk, kWriter, kSkip };
// Training's way at each head dim (kernels/attn_wgmma.cu): the writer warp at d128, the fastest at
// every d128 shape of dev/wgmma_attn_bwd.cu's run (docs/benchmarks.md "Session 25"); red.v4 at d64,
// where the writer took 4-5% longer (docs/benchmarks.md "Session 26").
template <int kHeadDim>
constexpr DqMode kTrainingDq = kHeadDim == 128 ? DqMode::kWriter : DqMode::kVectorReduce;

// Two consumer warpgroups; kWriter adds a producer warpgroup. Without it a step takes up to 255
// registers per thread (dQ stays in registers into the next step), more than the 240 that setmaxnreg
// can give consumers next to a producer warpgroup; kWriter stages dQ within its step and fits in 240.
template <DqMode kDq>
constexpr int kThreads = kDq == DqMode::kWriter ? 3 * 128 : 2 * 128;
constexpr int kProducerRegisters = 24, kConsumerRegisters = 240;
static_assert(setmaxnreg_fits<kProducerRegisters, 2, kConsumerRegisters>,
              "setmaxnreg cannot hand out more registers than the CTA was launched with");

// Shared memory: K, V, then per stage Q, dO, lse, D; then dS^T twice (by step parity); kBulk's and
// kWriter's dQ staging (a 64 x 64 f32 tile per warpgroup); the mbarriers: K/V's, each stage's full,
// kWriter's each stage's empty and the staging's full and empty. Step i's loads are issued in step
// i - kStages + 1, once both warpgroups are past step i - kStages (the barrier in the middle of every
// step), so three stages keep them 1.5 steps ahead; kBulk's staging leaves room for two. kWriter's
// producer issues them once both warpgroups are done with step i - kStages: two steps ahead, in three
// stages at d128; d64's dS^T takes the room of the third.
template <int kHeadDim, DqMode kDq>
struct Smem {
  using S = Shape<kHeadDim>;
  static constexpr bool kWriter = kDq == DqMode::kWriter;
  static constexpr int kStages = kDq == DqMode::kBulk || (kWriter && kHeadDim == 64) ? 2 : 3;
  static constexpr int kQ = 2 * S::kKeyBytes;
  static constexpr int kDo = kQ + kStages * S::kStepBytes;
  static constexpr int kDs = kDo + kStages * S::kStepBytes;
  static constexpr int kStats = kDs + 2 * S::kDsBytes;  // lse then D, kStepRows floats each, per stage
  static constexpr int kDqStaging = kStats + kStages * 2 * S::kStepRows * 4;
  static constexpr int kBarriers = kDqStaging + (kDq == DqMode::kBulk || kWriter ? 2 * 64 * 64 * 4 : 0);
  static constexpr int kBarrierCount = 1 + kStages + (kWriter ? kStages + 2 : 0);
  static constexpr int kBytes = kBarriers + 8 * kBarrierCount + 1024;  // + alignment slack
  static_assert(kBytes <= 227 * 1024, "more shared memory than an sm_90 CTA may take");
};

__device__ inline void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// A key tile and the query tiles that see it. Tiles 0 .. grid_tiles(T) - 1 (per KV head) hold raw
// positions on the document's tile grid (Lrsa::shift), which their queries see through the interval
// [raw_begin(t), t]; the rest hold the compacted rows [sink | Sel(0) | Sel(1) | ...], seen by every
// query from the partition two past the row's on (row < compacted_end(t)). Dense causal attention:
// lag 0, raw tiles only.
struct KeyTile {
  bool compacted;
  int key_begin, m_first, m_tiles;  // query tiles m_first .. m_first + m_tiles - 1 of the grid
  __host__ __device__ KeyTile(const Lrsa& lrsa, int tile, int T) {
    const int raw_tiles = lrsa.grid_tiles(T);
    compacted = tile >= raw_tiles;
    key_begin = compacted ? (tile - raw_tiles) * kBlock : tile * kBlock - lrsa.shift;
    // The keys some query sees: not the rows before the document, nor raw sinks (seen as compacted rows).
    const int first_key = compacted ? key_begin : max(key_begin, lrsa.lag ? lrsa.sink : 0);
    const int last_key = compacted ? key_begin + kBlock - 1 : min(key_begin + kBlock, T) - 1;
    m_first = m_tiles = 0;
    if (first_key > last_key) return;
    m_first = (viewers(lrsa, first_key, T).x + lrsa.shift) / kBlock;
    m_tiles = max((viewers(lrsa, last_key, T).y + lrsa.shift + kBlock - 1) / kBlock - m_first, 0);
  }
  // The queries [x, y) that see a key of this tile: the visible intervals grow with the query, so a
  // key's viewers are one interval. A raw key is seen up to the end of the partition after its own
  // (no raw key below the sinks past them: those are seen as compacted rows, and the rows before
  // the document by nothing); a compacted row from the partition two past its own on.
  __host__ __device__ int2 viewers(const Lrsa& lrsa, int key, int T) const {
    if (compacted)
      return {key < lrsa.sink ? key : lrsa.sink + ((key - lrsa.sink) / lrsa.keep + 2) * lrsa.lag, T};
    if (lrsa.lag == 0) return {key, T};
    return key < lrsa.sink ? int2{0, 0} : int2{key, min(T, lrsa.sink + (lrsa.partition(key) + 2) * lrsa.lag)};
  }
  // The queries that see every key of the tile: [x, y) (the tile's first key is seen longest, its
  // last one from the latest query on); steps inside it need no mask.
  __host__ __device__ int2 whole_steps(const Lrsa& lrsa, int T) const {
    return {viewers(lrsa, key_begin + kBlock - 1, T).x, viewers(lrsa, key_begin, T).y};
  }
};

// Whether every query of the step of `rows` queries from query_begin sees every key of the tile.
__host__ __device__ inline bool whole_step(int2 whole_steps, int query_begin, int rows) {
  return whole_steps.x <= query_begin && query_begin + rows <= whole_steps.y;
}

// A CTA's work: query tiles [m_begin, m_begin + m_count) of one key tile of one document: `length`
// rows from row `begin` of the packed batch (from row `padded_begin` in the lse, D and dQ sums, where
// every document starts on a tile), its compacted rows `compacted_rows` from row `compacted_begin` of
// ck/cv. The tiles and masks work in positions within the document. A key tile's query run is split
// into units of at most unit_query_tiles() query tiles (work_units), so that no CTA outlasts the rest
// (the sinks' compacted tile is seen by every query); the units add their dK and dV into fp32 sums.
struct WorkUnit {
  int tile, m_begin, m_count, begin, length, padded_begin, compacted_begin, compacted_rows;
};

// Which unit and KV head CTA `cta` takes (work_units): KV head by KV head through the first `head_major`
// units, then the tail's units with every KV head in turn.
struct UnitOrder {
  int head_major;
  __host__ __device__ int2 unit_and_head(int cta, int Hk) const {
    const int tail_cta = cta - head_major * Hk;
    return tail_cta < 0 ? int2{cta % head_major, cta / head_major} : int2{head_major + tail_cta / Hk, tail_cta % Hk};
  }
};

__device__ inline void bulk_reduce_add(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Where dQ's element (row, col) of a 64-row block sits in the fp32 sums (and in the staging tile): by
// 64-column atoms, each in the order of the dQ accumulator's registers, [warp][col / 8][lane][4], so
// that a thread's registers 4j .. 4j+3 are 16 contiguous bytes and a warp's 32 lanes cover 512 (the
// sums are only added to and rounded, so any layout both sides agree on works). Register i of a
// warp's accumulator holds row 16 warp + lane / 4 + 8 ((i / 2) % 2) and column 8 (i / 4) + 2 (lane %
// 4) + i % 2.
__host__ __device__ inline int dq_offset(int row, int col) {
  const int within = row % 16, lane = 4 * (within % 8) + (col % 8) / 2;
  return (col / 64) * 64 * 64 + (row / 16) * 1024 + (((col % 64) / 8) * 32 + lane) * 4 + 2 * (within / 8) + col % 2;
}

// lse (in log2 units: lse * log2 e) and d: [Hq][padded_rows] f32, every document padded to whole
// tiles. dq_accum: [Hq, padded_rows, kHeadDim] f32, each 64-row block laid out by dq_offset, zeroed;
// it gets dQ / scale (round_dq_kernel scales it).
// dk, dv: [T, Hk, kHeadDim] f32 for the raw tiles; dkc, dvc: [compacted rows, Hk, kHeadDim] f32 for
// the others; all zeroed. The tensor maps' boxes: 128 rows for K, V and their compacted rows,
// Shape::kStepRows for Q and dO.
template <int kHeadDim, DqMode kDq>
__global__ void __launch_bounds__(kThreads<kDq>, 1)
    attn_bwd_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                    const __grid_constant__ CUtensorMap v_map, const __grid_constant__ CUtensorMap ck_map,
                    const __grid_constant__ CUtensorMap cv_map, const __grid_constant__ CUtensorMap do_map, Lrsa lrsa,
                    const WorkUnit* units, UnitOrder order, const float* lse, const float* d_sum, int padded_rows,
                    float* dq_accum, float* dk, float* dv, float* dkc, float* dvc, int Hq, int Hk, float scale,
                    CtaSpan* spans) {
  using S = Shape<kHeadDim>;
  using L = Smem<kHeadDim, kDq>;
  constexpr int kStages = L::kStages, kRows = S::kStepRows;
  constexpr bool kWriter = L::kWriter;
  extern __shared__ unsigned char smem[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023) & ~1023u;
  const uint32_t k_tile = base, v_tile = base + S::kKeyBytes;
  const uint32_t kv_full = base + L::kBarriers, full = kv_full + 8;
  const uint32_t empty = full + 8 * kStages, dq_full = empty + 8 * kStages, dq_empty = dq_full + 8;  // kWriter's
  const uint32_t dq_staging = base + L::kDqStaging;
  const float* stats = reinterpret_cast<const float*>(
      smem + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem))) + L::kStats);
  const int2 unit_and_head = order.unit_and_head(blockIdx.x, Hk);
  const int kv_head = unit_and_head.y, group = Hq / Hk;
  const WorkUnit unit = units[unit_and_head.x];
  const int T = unit.length;
  const KeyTile tile(lrsa, unit.tile, T);
  const int key_begin = tile.key_begin, m_first = unit.m_begin;
  const int head_steps = S::kSteps * unit.m_count, steps = group * head_steps;
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    mbarrier_init(kv_full, 1);
    for (int s = 0; s < kStages; ++s) mbarrier_init(full + 8 * s, 1);
    if constexpr (kWriter) {
      for (int s = 0; s < kStages; ++s) mbarrier_init(empty + 8 * s, 8);  // lane 0 of every consumer warp
      mbarrier_init(dq_full, 8);                                          // lane 0 of every consumer warp
      mbarrier_init(dq_empty, 1);                                         // the writer
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const uint64_t began = spans ? global_ns() : 0;

  // Step i: query head kv_head * group + i / head_steps, its rows from `query_row` of the document's
  // tile grid (a multiple of kRows).
  auto query_row = [&](int i) { return m_first * kBlock + (i % head_steps) * kRows; };
  // Step i's Q, dO, lse and D into stage i % kStages, whose previous step both warpgroups are past.
  auto load_step = [&](int i) {
    const int stage = i % kStages, head = kv_head * group + i / head_steps;
    const uint32_t bar = full + 8 * stage, stats_stage = base + L::kStats + stage * 2 * kRows * 4;
    mbarrier_expect_bytes(bar, 2 * S::kStepBytes + 2 * kRows * 4);
    const int row = unit.begin + query_row(i) - lrsa.shift;  // the first document's grid starts before row 0: zeros
#pragma unroll
    for (int a = 0; a < S::kAtoms; ++a) {
      tma_load(base + L::kQ + stage * S::kStepBytes + a * S::kStepAtomBytes, &q_map, bar, 64 * a, head, row);
      tma_load(base + L::kDo + stage * S::kStepBytes + a * S::kStepAtomBytes, &do_map, bar, 64 * a, head, row);
    }
    const int64_t stats_at = int64_t(head) * padded_rows + unit.padded_begin + query_row(i);
    bulk_load(stats_stage, lse + stats_at, kRows * 4, bar);
    bulk_load(stats_stage + kRows * 4, d_sum + stats_at, kRows * 4, bar);
  };
  auto load_keys = [&] {
    mbarrier_expect_bytes(kv_full, 2 * S::kKeyBytes);
    const int row = (tile.compacted ? unit.compacted_begin : unit.begin) + key_begin;
#pragma unroll
    for (int a = 0; a < S::kAtoms; ++a) {
      tma_load(k_tile + a * S::kKeyAtomBytes, tile.compacted ? &ck_map : &k_map, kv_full, 64 * a, kv_head, row);
      tma_load(v_tile + a * S::kKeyAtomBytes, tile.compacted ? &cv_map : &v_map, kv_full, 64 * a, kv_head, row);
    }
  };
  // Step i's dQ sums from its row `row` on (dq_offset's 64-row blocks). The step's whole tile (d64: two
  // 64-row blocks, by warpgroup; d128: one, whose two atoms go by warpgroup) is one piece from row 0.
  auto step_dq_sums = [&](int i, int row) {
    const int head = kv_head * group + i / head_steps;
    return dq_accum + (int64_t(head) * padded_rows + unit.padded_begin + query_row(i) + row) * kHeadDim;
  };
  if constexpr (kWriter) {
    if (warpgroup == 2) {  // the producer: its first warp issues the loads, its second adds dQ
      setmaxnreg_dec<kProducerRegisters>();
      if (threadIdx.x == 256) {
        load_keys();
        for (int i = 0; i < steps; ++i) {
          if (i >= kStages) mbarrier_wait(empty + 8 * (i % kStages), ((i / kStages) & 1) ^ 1);
          load_step(i);
        }
      } else if (threadIdx.x == 288) {
        for (int i = 0; i < steps; ++i) {
          mbarrier_wait(dq_full, i & 1);
          bulk_reduce_add(step_dq_sums(i, 0), dq_staging, 2 * 64 * 64 * 4);
          asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
          mbarrier_arrive(dq_empty);
        }
        asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
      }
      return;
    }
    setmaxnreg_inc<kConsumerRegisters>();
  } else if (threadIdx.x == 0) {
    load_keys();
    for (int i = 0; i < min(kStages, steps); ++i) load_step(i);
  }

  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32, lane_group = lane / 4, quad = t % 4;
  const int key0 = key_begin + 64 * warpgroup + 16 * warp + lane_group;  // and key0 + 8
  const int2 whole_steps = tile.whole_steps(lrsa, T);
  const int2 seen[2] = {tile.viewers(lrsa, key0, T), tile.viewers(lrsa, key0 + 8, T)};
  int masked_steps = 0;
  const float scale_log2 = scale * kLog2e;
  float dk_acc[kHeadDim / 2], dv_acc[kHeadDim / 2];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
  const uint32_t k_wg = k_tile + warpgroup * 64 * 128, v_wg = v_tile + warpgroup * 64 * 128;
  // dQ = dS K: at d64 this warpgroup's 64 of the step's 128 queries, at d128 the step's 64 queries'
  // columns of atom `warpgroup`; a 64 x 64 tile either way (K = the 128 keys).
  constexpr bool kDqByRows = kRows == 128;
  const int dq_rows_block = kDqByRows ? warpgroup : 0, dq_atom = kDqByRows ? 0 : warpgroup;

  mbarrier_wait(kv_full, 0);
  uint64_t first_step = 0, last_step = 0;

  // kBulk's and kWriter's: this warpgroup's dQ tile into its staging, in the sums' order (dq_offset),
  // for a bulk copy to read.
  auto store_staging = [&](const float (&dq)[32]) {
    const uint32_t staging = dq_staging + warpgroup * 64 * 64 * 4;
    const int first = dq_offset(16 * warp + lane_group, 2 * quad);  // registers 4j .. sit 128 floats apart
#pragma unroll
    for (int j = 0; j < 8; ++j)
      asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(staging + (first + 128 * j) * 4),
                   "f"(dq[4 * j]), "f"(dq[4 * j + 1]), "f"(dq[4 * j + 2]), "f"(dq[4 * j + 3])
                   : "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // before the bulk copy reads it
  };
  // kWriter's: stages step i's dQ tile for the writer warp, once it has read step i - 1's.
  auto stage_dq = [&](const float (&dq)[32], int i) {
    if (i > 0) mbarrier_wait(dq_empty, (i - 1) & 1);
    store_staging(dq);
    __syncwarp();
    if (lane == 0) mbarrier_arrive(dq_full);
  };
  // Adds a step's dQ tile (from dq_tile on, by dq_offset) into the fp32 sums: its 4-register groups
  // [first, end) for the vector reductions, the whole tile otherwise.
  auto add_dq = [&](const float (&dq)[32], float* dq_tile, int first = 0, int end = 8) {
    if constexpr (kDq == DqMode::kVectorReduce || kDq == DqMode::kSplitReduce) {
#pragma unroll
      for (int j = first; j < end; ++j)
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(
                         dq_tile + dq_offset(16 * warp + lane_group, 8 * j + 2 * quad)),
                     "f"(dq[4 * j]), "f"(dq[4 * j + 1]), "f"(dq[4 * j + 2]), "f"(dq[4 * j + 3])
                     : "memory");
    } else if constexpr (kDq == DqMode::kAtomic) {
#pragma unroll
      for (int r = 0; r < 32; r += 2) {
        const int row = 16 * warp + lane_group + 8 * ((r / 2) % 2), col = 8 * (r / 4) + 2 * quad;
        atomicAdd(reinterpret_cast<float2*>(dq_tile + dq_offset(row, col)), make_float2(dq[r], dq[r + 1]));
      }
    } else if constexpr (kDq == DqMode::kBulk) {
      if (t == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");  // the last tile is read
      named_barrier_sync(2 + warpgroup, 128);
      store_staging(dq);
      named_barrier_sync(2 + warpgroup, 128);
      if (t == 0) bulk_reduce_add(dq_tile, dq_staging + warpgroup * 64 * 64 * 4, 64 * 64 * 4);
    }
  };
  float dq_pending[32];
  float* pending_tile = nullptr;

  // kWriter at d128 leaves a step's dK GEMM running into the next step, whose S^T and dP^T GEMMs
  // queue behind it, so that the tensor cores do not drain between steps. (At d64 a step's S^T and
  // dP^T take 128 registers, and with dK's in flight too ptxas serializes the wgmmas for want of
  // registers; issuing the next step's S^T before leaving a step keeps its accumulators in flight
  // across the loop's back edge, and ptxas serializes them too.)
  constexpr bool kDkAcross = kWriter && kHeadDim == 128;
  uint32_t p_t[kRows / 16][4], ds_t[kRows / 16][4];  // P^T and dS^T in bf16: dV's and dK's A operands

  // One step. `first` (a compile-time choice: a branch at run time around the wgmmas would make
  // ptxas serialize them) says whether a previous step's dQ is pending.
  auto step = [&](int i, auto first) {
    const int stage = i % kStages;
    const int query_begin = query_row(i) - lrsa.shift;  // a position
    const uint32_t q_s = base + L::kQ + stage * S::kStepBytes, do_s = base + L::kDo + stage * S::kStepBytes;
    const uint32_t ds_s = base + L::kDs + (i % 2) * S::kDsBytes;
    const float* lse_s = stats + stage * 2 * kRows;
    const float* d_s = lse_s + kRows;
    mbarrier_wait(full + 8 * stage, (i / kStages) & 1);
    if (spans && i == 0) first_step = global_ns();

    // S^T and dP^T in flight together (and the last step's dQ added meanwhile); dV's GEMM then
    // overlaps dP^T's, and each fp32 tile dies once it is packed to bf16. k16 step kk reads 32 bytes
    // into each row of atom kk / 4.
    float s[kRows / 2], dp[kRows / 2];
    if constexpr (!kDkAcross) fence_operands(dk_acc);
    fence_operands(dv_acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk)
      wgmma_ss<false>(s, descriptor(k_wg + (kk / 4) * S::kKeyAtomBytes + (kk % 4) * 32, 16, 1024),
                      descriptor(q_s + (kk / 4) * S::kStepAtomBytes + (kk % 4) * 32, 16, 1024), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk)
      wgmma_ss<false>(dp, descriptor(v_wg + (kk / 4) * S::kKeyAtomBytes + (kk % 4) * 32, 16, 1024),
                      descriptor(do_s + (kk / 4) * S::kStepAtomBytes + (kk % 4) * 32, 16, 1024), kk > 0);
    wgmma_commit();
    constexpr bool kSplit = kDq == DqMode::kSplitReduce;
    if constexpr (!decltype(first)::value) add_dq(dq_pending, pending_tile, 0, kSplit ? 4 : 8);
    wgmma_wait<1>();  // S^T (kDkAcross: and the previous step's dK)
    fence_operands(s);
    if constexpr (kDkAcross) {
      fence_operands(dk_acc);
      fence_operands(ds_t);
      __syncwarp();
      if (i > 0 && lane == 0) mbarrier_arrive(empty + 8 * ((i - 1) % kStages));  // step i - 1's Q, dO, lse, D are read
    }

    // Register i holds key key0 + 8 * ((i / 2) % 2) and query query_begin + 8 * (i / 4) + 2 * quad + (i % 2).
    const bool whole = whole_step(whole_steps, query_begin, kRows);
    masked_steps += !whole;

#pragma unroll
    for (int j = 0; j < kRows / 8; ++j) {  // 8-query column blocks
      const float2 lse2 = *reinterpret_cast<const float2*>(lse_s + 8 * j + 2 * quad);  // log2 units
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[4 * j + e] = exp2_ftz(s[4 * j + e] * scale_log2 - ((e % 2) ? lse2.y : lse2.x));
      }
    }
    if (!whole) {
#pragma unroll
      for (int i = 0; i < kRows / 2; ++i) {
        const int query = query_begin + 8 * (i / 4) + 2 * quad + (i % 2), h = (i / 2) % 2;
        if (query < seen[h].x || query >= seen[h].y) s[i] = 0.0f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kRows / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) p_t[kk][r] = pack_bf16x2(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
    // dV += P^T dO and dK += dS^T Q: B is the step's dO or Q, MN-major, its atoms kStepAtomBytes apart.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kRows / 16; ++kk)
      wgmma_rs_mn(dv_acc, p_t[kk], descriptor(do_s + kk * 2048, S::kStepAtomBytes, 1024));
    wgmma_commit();
    if constexpr (kSplit && !decltype(first)::value) add_dq(dq_pending, pending_tile, 4, 8);
    wgmma_wait<1>();  // dP^T (committed before dV)
    fence_operands(dp);
#pragma unroll
    for (int j = 0; j < kRows / 8; ++j) {
      const float2 d2 = *reinterpret_cast<const float2*>(d_s + 8 * j + 2 * quad);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 4 * j + e;  // P from its bf16 copy, as dV uses it
        const __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162*>(&p_t[i / 8][(i % 8) / 2]);
        const float p = (i % 2) ? __high2float(pair) : __low2float(pair);
        dp[i] = p * (dp[i] - ((e % 2) ? d2.y : d2.x));  // dS / scale
      }
    }
#pragma unroll
    for (int kk = 0; kk < kRows / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) ds_t[kk][r] = pack_bf16x2(dp[8 * kk + 2 * r], dp[8 * kk + 2 * r + 1]);

    // dS^T to shared memory for dQ: query q of key row kr sits in block q / 64, 128B-swizzled.
    // ds_t[kk][0..3] are the 8 x 8 blocks (keys +0 / +8) x (queries 16 kk + 0 / +8) in mma fragment
    // order: one stmatrix.x4 each, lane l giving the address of row l % 8 of block l / 8.
    {
      const int block = (t % 32) / 8, kr = 64 * warpgroup + 16 * warp + 8 * (block % 2) + t % 8;
#pragma unroll
      for (int kk = 0; kk < kRows / 16; ++kk) {
        const int q = 16 * kk + 8 * (block / 2), chunk = (q % 64) / 8;
        const uint32_t address = ds_s + (q / 64) * kBlock * 128 + kr * 128 + ((chunk ^ (kr % 8)) * 16);
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address),
                     "r"(ds_t[kk][0]), "r"(ds_t[kk][1]), "r"(ds_t[kk][2]), "r"(ds_t[kk][3])
                     : "memory");
      }
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    named_barrier_sync(1, 256);  // both warpgroups' dS^T rows are in
    // Both warpgroups are past step i - 1: its stage takes step i - 1 + kStages. (Waiting for the
    // stage on an mbarrier instead, in thread 0 alone, puts a loop in a branch of one thread inside
    // every step; ptxas then builds every wgmma descriptor on the vector datapath, with two R2UR
    // moves each: 1,112 instructions a step against 1,052, and 36 bytes of spills against none.)
    if (!kWriter && threadIdx.x == 0 && i >= 1 && i - 1 + kStages < steps) load_step(i - 1 + kStages);

    // dQ's GEMM first (dS from block dq_rows_block, K's atom dq_atom as B over the 128 keys), then dK's.
    // kWriter's dQ lives in this step only (staged below), so it holds no registers across steps.
    [[maybe_unused]] float dq_step[32];
    float(&dq)[32] = *[&] {
      if constexpr (kWriter) return &dq_step;
      else return &dq_pending;
    }();
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
      wgmma_ss<true>(dq, descriptor(ds_s + dq_rows_block * kBlock * 128 + kk * 2048, 1024, 1024),
                     descriptor(k_tile + dq_atom * S::kKeyAtomBytes + kk * 2048, 1024, 1024), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kRows / 16; ++kk)
      wgmma_rs_mn(dk_acc, ds_t[kk], descriptor(q_s + kk * 2048, S::kStepAtomBytes, 1024));
    wgmma_commit();
    if constexpr (kWriter) {  // stage dQ while dK's GEMM runs
      wgmma_wait<1>();
      fence_operands(dq);
      stage_dq(dq, i);
    }
    pending_tile = step_dq_sums(i, 64 * dq_rows_block) + dq_offset(0, 64 * dq_atom);
    if constexpr (!kDkAcross) {
      wgmma_wait<0>();
      fence_operands(dq);
      fence_operands(dv_acc);
      fence_operands(dk_acc);
      fence_operands(p_t);
      fence_operands(ds_t);
      __syncwarp();
      if (kWriter && lane == 0) mbarrier_arrive(empty + 8 * stage);  // Q, dO, lse and D of step i are read
    } else {  // dV's GEMM is done (dQ's wait)
      fence_operands(dv_acc);
      fence_operands(p_t);
    }
  };
  if constexpr (kDkAcross) {  // no dQ is pending between steps: one loop body, the code of one step
    fence_operands(dk_acc);   // zeroed before the first wgmma
    for (int i = 0; i < steps; ++i) step(i, std::false_type{});
    wgmma_wait<0>();  // the last dK
    fence_operands(dk_acc);
    fence_operands(ds_t);
  } else {
    step(0, std::true_type{});  // every unit has at least one query tile (work_units)
    for (int i = 1; i < steps; ++i) step(i, std::false_type{});
    add_dq(dq_pending, pending_tile);
  }
  if (kDq == DqMode::kBulk && t == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
  if (spans) last_step = global_ns();

  float *dk_out = tile.compacted ? dkc : dk, *dv_out = tile.compacted ? dvc : dv;
  const int rows = tile.compacted ? unit.compacted_rows : T;
  const int first_row = tile.compacted ? unit.compacted_begin : unit.begin;
#pragma unroll
  for (int r = 0; r < kHeadDim / 2; r += 2) {
    const int key = key0 + 8 * ((r / 2) % 2), col = 8 * (r / 4) + 2 * quad;
    if (key < 0 || key >= rows) continue;  // outside the document (key < 0: a tile of sinks only has no unit)
    const int64_t at = (int64_t(first_row + key) * Hk + kv_head) * kHeadDim + col;
    atomicAdd(reinterpret_cast<float2*>(dk_out + at), make_float2(dk_acc[r] * scale, dk_acc[r + 1] * scale));
    atomicAdd(reinterpret_cast<float2*>(dv_out + at), make_float2(dv_acc[r], dv_acc[r + 1]));
  }
  if (spans) {
    named_barrier_sync(4, 256);  // every consumer is done (kWriter's producer has returned)
    if (threadIdx.x == 0)
      spans[blockIdx.x] = {began, first_step, last_step, global_ns(), sm_id(), steps, masked_steps};
  }
}

// Eight bf16 as one 16-byte word.
__device__ inline uint4 pack_bf16x8(const float (&x)[8]) {
  return {pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3]), pack_bf16x2(x[4], x[5]), pack_bf16x2(x[6], x[7])};
}

// dQ: scale times the fp32 sums [Hq, padded_rows, kHeadDim] (64-row blocks by dq_offset) to bf16 [T,
// Hq, kHeadDim], rows y_stride apart; row_of [padded_rows]: the row at each padded row, -1 at the
// pads (padded_sources). blockIdx.y is the head; a thread takes 8 columns of the padded rows r and
// r + 8 (r % 16 < 8), whose sums share four 16-byte groups (dq_offset), so each is read once, whole.
template <int kHeadDim>
__global__ void round_dq_kernel(const float* x, const int* row_of, float scale, __nv_bfloat16* y, int64_t y_stride,
                                int padded_rows) {
  constexpr int kChunks = kHeadDim / 8;
  const int head = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(padded_rows / 2) * kChunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int pair = int(i / kChunks), col = int(i % kChunks) * 8;
    const int first = 16 * (pair / 8) + pair % 8;  // and first + 8
    const float4* sums = reinterpret_cast<const float4*>(
        x + (int64_t(head) * padded_rows + first - first % 64) * kHeadDim + dq_offset(first % 64, col));
    float dq[2][8];
#pragma unroll
    for (int c = 0; c < 4; ++c) {  // columns col + 2c and col + 2c + 1 of both rows
      const float4 group = sums[c];
      dq[0][2 * c] = scale * group.x, dq[0][2 * c + 1] = scale * group.y;
      dq[1][2 * c] = scale * group.z, dq[1][2 * c + 1] = scale * group.w;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row_of[first + 8 * h];
      if (row >= 0) *reinterpret_cast<uint4*>(y + row * y_stride + head * kHeadDim + col) = pack_bf16x8(dq[h]);
    }
  }
}

// dK and dV of a position: its raw tile's part plus, if it is a sink or selected, its compacted row's
// (compacted_row [Hk, T], -1 for neither). dk_out, dv_out: [T, Hk, kHeadDim], rows dk_stride and
// dv_stride apart. blockIdx.y is the KV head; a thread takes 8 columns of a position.
template <int kHeadDim>
__global__ void finalize_kv_kernel(const float* dk, const float* dv, const float* dkc, const float* dvc,
                                   const int* compacted_row, __nv_bfloat16* dk_out, int64_t dk_stride,
                                   __nv_bfloat16* dv_out, int64_t dv_stride, int T, int Hk) {
  constexpr int kChunks = kHeadDim / 8;
  const int head = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(T) * kChunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int position = int(i / kChunks), col = int(i % kChunks) * 8;
    const int row = compacted_row[int64_t(head) * T + position];
    const int64_t from = (int64_t(position) * Hk + head) * kHeadDim + col;
    const int64_t from_row = (int64_t(row) * Hk + head) * kHeadDim + col;
    auto finish = [&](const float* raw, const float* compacted, __nv_bfloat16* out) {
      float sum[8];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float4 part = reinterpret_cast<const float4*>(raw + from)[h];
        if (row >= 0) {
          const float4 more = reinterpret_cast<const float4*>(compacted + from_row)[h];
          part = {part.x + more.x, part.y + more.y, part.z + more.z, part.w + more.w};
        }
        sum[4 * h] = part.x, sum[4 * h + 1] = part.y, sum[4 * h + 2] = part.z, sum[4 * h + 3] = part.w;
      }
      *reinterpret_cast<uint4*>(out + head * kHeadDim + col) = pack_bf16x8(sum);
    };
    finish(dk, dkc, dk_out + position * dk_stride);
    finish(dv, dvc, dv_out + position * dv_stride);
  }
}

// Where each document of doc_start [B + 1] starts in the tile-padded lse, D and dQ sums (its tile
// grid, Lrsa::shift rows before its first position): [B + 1], the last the rows in all.
inline std::vector<int> padded_begins(const std::vector<int>& doc_start, const Lrsa& lrsa) {
  std::vector<int> begin{0};
  for (size_t b = 0; b + 1 < doc_start.size(); ++b)
    begin.push_back(begin[b] + lrsa.grid_tiles(doc_start[b + 1] - doc_start[b]) * kBlock);
  return begin;
}

// Each row's place in the tile-padded sums: [doc_start.back()].
inline std::vector<int> padded_rows_of(const std::vector<int>& doc_start, const Lrsa& lrsa) {
  const std::vector<int> begin = padded_begins(doc_start, lrsa);
  std::vector<int> padded(size_t(doc_start.back()));
  for (size_t b = 0; b + 1 < doc_start.size(); ++b)
    for (int t = doc_start[b]; t < doc_start[b + 1]; ++t)
      padded[size_t(t)] = begin[b] + lrsa.shift + t - doc_start[b];
  return padded;
}

// The inverse of padded_rows_of's `padded` over `padded_rows` rows: the row at each padded row, -1 at
// the pads.
inline std::vector<int> padded_sources(const std::vector<int>& padded, int padded_rows) {
  std::vector<int> row_of(size_t(padded_rows), -1);
  for (size_t t = 0; t < padded.size(); ++t) row_of[size_t(padded[t])] = int(t);
  return row_of;
}

// The CTAs' work over the documents doc_start [B + 1] (compacted rows from compacted_start [B + 1];
// all zeros for dense attention), for `kv_heads` KV heads on `sms` SMs, and the order CTAs take it in.
// Each key tile's query run is cut where the query tile is a multiple of the unit,
// unit_query_tiles(length, group) or `fixed` (the dev harness's comparisons): a unit then lies in one
// block of `unit` query tiles, and the units of the many key tiles that see a block cover the same
// query tiles. Per KV head they run block by block, the longest first within one, so a block's dQ
// reduce-adds and Q and dO loads meet in L2 instead of leaving it between sweeps (docs/benchmarks.md,
// "Session 31"). So that no CTA outlasts the rest, the shortest units, at least two waves of CTAs over
// the KV heads, run last for every KV head, the longest first.
struct WorkUnits {
  std::vector<WorkUnit> units;
  UnitOrder order;
};
inline WorkUnits work_units(const std::vector<int>& doc_start, const std::vector<int>& compacted_start,
                            const Lrsa& lrsa, int group, int kv_heads, int sms,
                            std::optional<int> fixed = std::nullopt) {
  const std::vector<int> padded_begin = padded_begins(doc_start, lrsa);
  std::vector<WorkUnit> units;
  std::vector<int> block;  // of each unit: its first query tile over the unit, within its document
  for (size_t b = 0; b + 1 < doc_start.size(); ++b) {
    const int n = doc_start[b + 1] - doc_start[b], doc_compacted = compacted_start[b + 1] - compacted_start[b];
    const int tiles = lrsa.grid_tiles(n) + (doc_compacted + kBlock - 1) / kBlock;
    const int unit = fixed.value_or(unit_query_tiles(n, group));
    for (int tile = 0; tile < tiles; ++tile) {
      const KeyTile key_tile(lrsa, tile, n);
      const int end = key_tile.m_first + key_tile.m_tiles;
      for (int m = key_tile.m_first; m < end;) {
        const int next = std::min(end, (m / unit + 1) * unit);
        units.push_back({tile, m, next - m, doc_start[b], n, padded_begin[b], compacted_start[b], doc_compacted});
        block.push_back(m / unit);
        m = next;
      }
    }
  }
  std::vector<int> lengths;
  for (const WorkUnit& u : units) lengths.push_back(u.m_count);
  std::sort(lengths.begin(), lengths.end());
  const size_t tail_units = size_t((2 * sms + kv_heads - 1) / kv_heads);
  const int tail_length = lengths.empty() ? 0 : lengths[std::min(tail_units, lengths.size()) - 1];
  std::vector<int> order(units.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
  auto first_row = [&](int i) { return units[i].padded_begin + units[i].m_begin * kBlock; };
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    const WorkUnit &x = units[a], &y = units[b];
    const bool x_tail = x.m_count <= tail_length, y_tail = y.m_count <= tail_length;
    if (x_tail != y_tail) return y_tail;
    if (!x_tail && (x.padded_begin != y.padded_begin || block[a] != block[b]))
      return x.padded_begin != y.padded_begin ? x.padded_begin < y.padded_begin : block[a] < block[b];
    if (x.m_count != y.m_count) return x.m_count > y.m_count;
    return first_row(a) != first_row(b) ? first_row(a) < first_row(b) : x.tile < y.tile;
  });
  WorkUnits out;
  for (int i : order) out.units.push_back(units[i]);
  out.order.head_major =
      int(std::count_if(units.begin(), units.end(), [&](const WorkUnit& u) { return u.m_count > tail_length; }));
  return out;
}

// The backward's fp32 workspace, one buffer of floats() (the launcher's and the dev harness's): lse
// (log2 units) and D [Hq, padded_rows]; dQ's sums [Hq, padded_rows, kHeadDim]; the raw [T, Hk,
// kHeadDim] and compacted [max(rows, 1), Hk, kHeadDim] rows' dK and dV sums. Every part is a
// multiple of 16 bytes long, so each starts 16-byte aligned. The D pass writes lse and D and zeroes
// the rest (zeroed() floats from zeroed_from(); delta_extras).
struct BackwardSums {
  int64_t stats, dq, raw, compacted;
  BackwardSums(int64_t Hq, int64_t padded_rows, int64_t T, int64_t Hk, int64_t compacted_rows, int64_t head_dim)
      : stats(Hq * padded_rows),
        dq(stats * head_dim),
        raw(T * Hk * head_dim),
        compacted(std::max<int64_t>(compacted_rows, 1) * Hk * head_dim) {}
  int64_t floats() const { return 2 * stats + dq + 2 * raw + 2 * compacted; }
  int64_t zeroed_from() const { return 2 * stats; }
  int64_t zeroed() const { return floats() - zeroed_from(); }
  struct Parts {
    float *lse, *d, *dq, *dk, *dv, *dkc, *dvc;
  };
  Parts parts(float* base) const {
    Parts p;
    p.lse = base, p.d = p.lse + stats, p.dq = p.d + stats, p.dk = p.dq + dq, p.dv = p.dk + raw;
    p.dkc = p.dv + raw, p.dvc = p.dkc + compacted;
    return p;
  }
  // What the D pass writes besides D: the forward's lse [Hq, T] in log2 units at every padded row,
  // and the zeroed sums.
  DeltaExtras delta_extras(float* base, const float* saved_lse) const {
    return {saved_lse, kLog2e, parts(base).lse, reinterpret_cast<float4*>(base + zeroed_from()), zeroed() / 4};
  }
};

}  // namespace lrsa::cuda::wgmma::bwd
