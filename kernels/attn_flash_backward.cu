// Flash attention backward (FlashAttention-2 style), dense causal and LRSA, native GQA.
//
//   1. delta_kernel: delta[h, t] = sum_d dO[t, h, d] * O[t, h, d] (f32).
//   2. flash_backward_kernel: one CTA owns kBlockN keys of one KV head (a raw block, or a block
//      of compacted rows of one partition) and loops over every query head of its GQA group and
//      every query tile that sees those keys, recomputing P from the saved lse. dK and dV
//      accumulate in registers (no atomics, fixed order). dQ: either atomically added (f32) into
//      a [T, Hq, D] accumulator (fast, order not deterministic), or left to pass 3.
//   3. deterministic mode: flash_dq_kernel, shaped like the forward (a query tile walks its
//      visible keys), accumulates dQ in registers; no atomics anywhere.
// LRSA: the compacted blocks run first, each (block, query chunk) leaving its partial dK/dV in a
// slot (f32, [Hk, slots, kBlockN, D]; attn_plan.h); the raw blocks' epilogue adds a selected
// row's slots, in slot order, to its raw gradient (each selected row has exactly one compact row,
// found through an inverse map), so gradients from both paths meet without atomics.
//
// Per warp (16 keys) in the main kernel, with the query tile Q, dO in shared memory:
//   S^T = K Q^T,  P^T = exp2(S^T * scale*log2e - lse*log2e),  dV += P^T dO,
//   dP^T = V dO^T,  dS^T = P^T * (dP^T - delta),  dK += dS^T Q,  dQ += dS K (via shared memory).
// The 1/sqrt(d) factor of dK and dQ is applied once at the end.
#include <algorithm>

#include "attn_common.cuh"
#include "attn_delta.cuh"
#include "attn_wgmma.h"

namespace lrsa::cuda {
namespace attn_detail {
namespace {

// dq = scale * dq_acc, into the output dtype and layout.
template <typename Out>
__global__ void dq_convert_kernel(const float* __restrict__ acc, Out* __restrict__ dq, int64_t dq_stride,
                                  int64_t row_elems, int64_t n, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n / 2; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = 2 * i, row = e / row_elems, col = e % row_elems;
    const float2 x = reinterpret_cast<const float2*>(acc)[i];
    store2(dq + row * dq_stride + col, x.x * scale, x.y * scale);
  }
}

// inv[hk, row] = compact row of `row` in head hk's history (rows never selected keep -1).
__global__ void inverse_map_kernel(const int* __restrict__ indices, int rows, int Hk, int T_rows,
                                   int* __restrict__ inv) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(Hk) * rows;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t hk = i / rows;
    inv[hk * T_rows + indices[i]] = int(i % rows);
  }
}

// ---------------------------------------------------------------------------------------------
// Main backward kernel

struct BwdArgs {
  const bf16_t* q;
  const bf16_t* dout;
  int64_t q_stride, do_stride;
  KvSource kv;
  const float* lse;    // [Hq, T]
  const float* delta;  // [Hq, T]
  float* dq_acc;       // [T, Hq, D] (atomic dQ)
  void* dk;            // raw blocks: [T, Hk, D] Out
  void* dv;
  int64_t dk_stride, dv_stride;
  const int* inv;         // [Hk, T] or null (no compacted history)
  float* part_dk;         // [Hk, slots, kBlockN, D] partial sums of the compact blocks
  float* part_dv;
  const int* slot_first;  // [compact blocks + 1]
  int slots, kept;
  const BwdTile* tiles;
  int T, Hq, Hk, group;
  float scale, scale_log2;
};

template <int D, bool kAtomicDq>
constexpr size_t bwd_smem_bytes() {
  // K, V, Q[2], dO[2], dS^T (atomic dQ only), lse[2], delta[2]
  return size_t(2 * kBlockN * D + 4 * kBlockM * D + (kAtomicDq ? kBlockN * kBlockM : 0)) * sizeof(bf16_t) +
         size_t(4 * kBlockM) * sizeof(float);
}

template <int D, bool kCompact, bool kAtomicDq, typename Out>
__global__ void __launch_bounds__(kThreads, 2) flash_backward_kernel(const BwdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16_t* k_tile = reinterpret_cast<bf16_t*>(smem);  // [kBlockN][D]
  bf16_t* v_tile = k_tile + kBlockN * D;              // [kBlockN][D]
  bf16_t* q_tile = v_tile + kBlockN * D;              // [2][kBlockM][D]
  bf16_t* do_tile = q_tile + 2 * kBlockM * D;         // [2][kBlockM][D]
  bf16_t* ds_tile = do_tile + 2 * kBlockM * D;        // [kBlockN][kBlockM] (atomic dQ)
  float* lse_s = reinterpret_cast<float*>(ds_tile + (kAtomicDq ? kBlockN * kBlockM : 0));  // [2][kBlockM]
  float* delta_s = lse_s + 2 * kBlockM;                                                    // [2][kBlockM]

  const BwdTile t = a.tiles[blockIdx.x / a.Hk];  // block = (key block, KV head), head fastest
  const int hk = blockIdx.x % a.Hk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int key_rows = t.k1 - t.k0;

  {
    const int64_t k_off = kCompact ? (int64_t(hk) * a.kv.comp_rows + t.k0) * D : int64_t(t.k0) * a.kv.k_stride + int64_t(hk) * D;
    const int64_t v_off = kCompact ? k_off : int64_t(t.k0) * a.kv.v_stride + int64_t(hk) * D;
    load_tile_async<kBlockN, D>(k_tile, (kCompact ? a.kv.kc : a.kv.k) + k_off, kCompact ? D : a.kv.k_stride, key_rows);
    load_tile_async<kBlockN, D>(v_tile, (kCompact ? a.kv.vc : a.kv.v) + v_off, kCompact ? D : a.kv.v_stride, key_rows);
    cp_async_commit();
  }

  // Steps: (query head of the group, query tile), head-major.
  const int q_tiles = (t.q1 - t.q0 + kBlockM - 1) / kBlockM;
  const int steps = a.group * q_tiles;
  auto step_head = [&](int it) { return hk * a.group + it / q_tiles; };
  auto step_q0 = [&](int it) { return t.q0 + (it % q_tiles) * kBlockM; };
  auto load_step = [&](int it, int buf) {
    const int h = step_head(it), qs = step_q0(it), rows = min(kBlockM, t.q1 - qs);
    load_tile_async<kBlockM, D>(q_tile + buf * kBlockM * D, a.q + int64_t(qs) * a.q_stride + int64_t(h) * D,
                                a.q_stride, rows);
    load_tile_async<kBlockM, D>(do_tile + buf * kBlockM * D, a.dout + int64_t(qs) * a.do_stride + int64_t(h) * D,
                                a.do_stride, rows);
    if (threadIdx.x < kBlockM) {
      const bool valid = int(threadIdx.x) < rows;
      const int64_t i = int64_t(h) * a.T + qs + (valid ? threadIdx.x : 0);
      cp_async4(smem_addr(lse_s + buf * kBlockM + threadIdx.x), a.lse + i, valid);
      cp_async4(smem_addr(delta_s + buf * kBlockM + threadIdx.x), a.delta + i, valid);
    }
  };
  if (steps > 0) load_step(0, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
  zero(dk);
  zero(dv);
  const uint32_t k_addr = smem_addr(k_tile), v_addr = smem_addr(v_tile), ds_addr = smem_addr(ds_tile);
  const int key0 = warp * 16;  // this warp's first key in the block

  for (int it = 0; it < steps; ++it) {
    const int buf = it & 1;
    if (it + 1 < steps) {
      load_step(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int h = step_head(it), qs = step_q0(it), q_rows = min(kBlockM, t.q1 - qs);
    const uint32_t q_addr = smem_addr(q_tile + buf * kBlockM * D), do_addr = smem_addr(do_tile + buf * kBlockM * D);
    const float* lse_b = lse_s + buf * kBlockM;
    const float* delta_b = delta_s + buf * kBlockM;

    // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x kBlockM queries.
    float s[kBlockM / 8][4], dp[kBlockM / 8][4];
    smem_scores<D, kBlockM>(s, k_addr, key0, q_addr, lane);
    if (bwd_needs_mask(kCompact, t.k0, key0, key_rows, qs, q_rows))
      apply_mask(s, lane, [&](int r, int col) { return bwd_visible(kCompact, t.k0, key0 + r, key_rows, qs, col, q_rows); });
    // P^T; columns are queries: s[j][e] is query 8j + 2c + (e & 1).
#pragma unroll
    for (int j = 0; j < kBlockM / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[j][e] = exp2f(fmaf(s[j][e], a.scale_log2, -lse_b[8 * j + 2 * c + (e & 1)] * kLog2e));
    pv_accumulate<D, kBlockM>(dv, s, do_addr, lane);

    smem_scores<D, kBlockM>(dp, v_addr, key0, do_addr, lane);
    // dS^T = P^T (dP^T - delta), into s.
#pragma unroll
    for (int j = 0; j < kBlockM / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= dp[j][e] - delta_b[8 * j + 2 * c + (e & 1)];
    pv_accumulate<D, kBlockM>(dk, s, q_addr, lane);

    if constexpr (kAtomicDq) {
      // dQ needs all kBlockN keys per query: dS^T goes through shared memory, then each warp
      // takes 16 queries: dQ = dS K, 64 columns at a time to bound the registers.
#pragma unroll
      for (int j = 0; j < kBlockM / 8; ++j) {
        *reinterpret_cast<uint32_t*>(ds_tile + swz<kBlockM>(key0 + g, 8 * j + 2 * c)) = pack_bf16(s[j][0], s[j][1]);
        *reinterpret_cast<uint32_t*>(ds_tile + swz<kBlockM>(key0 + g + 8, 8 * j + 2 * c)) = pack_bf16(s[j][2], s[j][3]);
      }
      __syncthreads();
      const int q_local = warp * 16;
#pragma unroll
      for (int d0 = 0; d0 < D; d0 += 64) {
        float dq[8][4];
        zero(dq);
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          uint32_t af[4];
          ldmatrix_x4_trans(af, addr_at_trans<kBlockM>(ds_addr, q_local, kk * 16, lane));
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, addr_b_trans<D>(k_addr, kk * 16, d0 + np * 16, lane));
            mma_bf16(dq[2 * np], af, b[0], b[1]);
            mma_bf16(dq[2 * np + 1], af, b[2], b[3]);
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int r = q_local + g + 8 * i;
          if (r >= q_rows) continue;
          float* dst = a.dq_acc + (int64_t(qs + r) * a.Hq + h) * D + d0 + 2 * c;
#pragma unroll
          for (int n = 0; n < 8; ++n) {
#if __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst + 8 * n), make_float2(dq[n][2 * i], dq[n][2 * i + 1]));
#else
            atomicAdd(dst + 8 * n, dq[n][2 * i]);
            atomicAdd(dst + 8 * n + 1, dq[n][2 * i + 1]);
#endif
          }
        }
      }
    }
    __syncthreads();  // the next step's copies overwrite this step's buffers (and dS^T)
  }
  cp_async_wait<0>();  // a block no query sees (steps == 0) still has its K/V copy in flight

  // Epilogue: dK = scale * (dS^T Q), dV. Compact blocks leave f32 partial sums in their slot;
  // raw blocks add the slots of their selected rows and write the output dtype.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = key0 + g + 8 * i;
    if (key >= key_rows) continue;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      dk[d][2 * i] *= a.scale;
      dk[d][2 * i + 1] *= a.scale;
    }
    if constexpr (kCompact) {
      const int64_t off = ((int64_t(hk) * a.slots + t.slot) * kBlockN + key) * D + 2 * c;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) {
        store2(a.part_dk + off + 8 * d, dk[d][2 * i], dk[d][2 * i + 1]);
        store2(a.part_dv + off + 8 * d, dv[d][2 * i], dv[d][2 * i + 1]);
      }
    } else {
      const int row = t.k0 + key;
      const int ci = a.inv != nullptr ? a.inv[int64_t(hk) * a.T + row] : -1;
      if (ci >= 0) {
        const int block = compact_block_of(ci, a.kept), r = compact_row_in_block(ci, a.kept);
        for (int slot = a.slot_first[block]; slot < a.slot_first[block + 1]; ++slot) {
          const int64_t off = ((int64_t(hk) * a.slots + slot) * kBlockN + r) * D + 2 * c;
#pragma unroll
          for (int d = 0; d < D / 8; ++d) {
            const float2 xk = *reinterpret_cast<const float2*>(a.part_dk + off + 8 * d);
            const float2 xv = *reinterpret_cast<const float2*>(a.part_dv + off + 8 * d);
            dk[d][2 * i] += xk.x;
            dk[d][2 * i + 1] += xk.y;
            dv[d][2 * i] += xv.x;
            dv[d][2 * i + 1] += xv.y;
          }
        }
      }
      Out* dkp = static_cast<Out*>(a.dk) + int64_t(row) * a.dk_stride + int64_t(hk) * D + 2 * c;
      Out* dvp = static_cast<Out*>(a.dv) + int64_t(row) * a.dv_stride + int64_t(hk) * D + 2 * c;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) {
        store2(dkp + 8 * d, dk[d][2 * i], dk[d][2 * i + 1]);
        store2(dvp + 8 * d, dv[d][2 * i], dv[d][2 * i + 1]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Deterministic dQ pass: per query tile, over the same key blocks as the forward.

struct DqArgs {
  const bf16_t* q;
  const bf16_t* dout;
  int64_t q_stride, do_stride;
  KvSource kv;
  const float* lse;
  const float* delta;
  void* dq;
  int64_t dq_stride;
  const FwdTile* tiles;
  int T, Hq, group;
  float scale, scale_log2;
};

template <int D>
constexpr size_t dq_smem_bytes() {
  return size_t(2 * kBlockM + 4 * kBlockN) * D * sizeof(bf16_t);  // Q, dO, K[2], V[2]
}

template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 2) flash_dq_kernel(const DqArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16_t* q_tile = reinterpret_cast<bf16_t*>(smem);  // [kBlockM][D]
  bf16_t* do_tile = q_tile + kBlockM * D;             // [kBlockM][D]
  bf16_t* k_tile = do_tile + kBlockM * D;             // [2][kBlockN][D]
  bf16_t* v_tile = k_tile + 2 * kBlockN * D;          // [2][kBlockN][D]

  const FwdTile t = a.tiles[blockIdx.x / a.Hq];  // block = (query tile, head), head fastest
  const int h = blockIdx.x % a.Hq, hk = h / a.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int q_first = t.q0 + warp * 16;

  load_tile_async<kBlockM, D>(q_tile, a.q + int64_t(t.q0) * a.q_stride + int64_t(h) * D, a.q_stride, t.q1 - t.q0);
  load_tile_async<kBlockM, D>(do_tile, a.dout + int64_t(t.q0) * a.do_stride + int64_t(h) * D, a.do_stride,
                              t.q1 - t.q0);
  cp_async_commit();

  float lse2[2], delta[2];  // rows g and g + 8 (padding rows: 0, their gradients are dropped)
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = q_first + g + 8 * i;
    lse2[i] = row < t.q1 ? a.lse[int64_t(h) * a.T + row] * kLog2e : 0.f;
    delta[i] = row < t.q1 ? a.delta[int64_t(h) * a.T + row] : 0.f;
  }
  // Q fragments stay in registers; dO's are re-read from shared memory per key block (keeping
  // both resident spills at D = 128).
  uint32_t qf[D / 16][4];
  float dq[D / 8][4];
  zero(dq);
  const uint32_t do_addr = smem_addr(do_tile);

  for_each_key_block<D>(t, hk, a.kv, k_tile, v_tile, [&](int n, const KeyBlock& b, uint32_t k_addr, uint32_t v_addr) {
    if (n == 0) load_a_rows<D>(qf, smem_addr(q_tile), warp * 16, lane);
    float s[kBlockN / 8][4], dp[kBlockN / 8][4];
    qk_scores<D>(s, qf, k_addr, lane);
    if (block_needs_mask(b, q_first))
      apply_mask(s, lane, [&](int r, int col) { return block_visible(b, q_first + r, col); });
    smem_scores<D, kBlockN>(dp, do_addr, warp * 16, v_addr, lane);
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[j][e] = exp2f(fmaf(s[j][e], a.scale_log2, -lse2[e >> 1])) * (dp[j][e] - delta[e >> 1]);
    pv_accumulate<D, kBlockN>(dq, s, k_addr, lane);
  });

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = q_first + g + 8 * i;
    if (row >= t.q1) continue;
    Out* o = static_cast<Out*>(a.dq) + int64_t(row) * a.dq_stride + int64_t(h) * D + 2 * c;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) store2(o + 8 * d, dq[d][2 * i] * a.scale, dq[d][2 * i + 1] * a.scale);
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers

template <int D, bool kCompact, bool kAtomicDq, typename Out>
void launch_backward(BwdArgs a, const BwdTile* tiles, int n_tiles, int Hk) {
  if (n_tiles == 0) return;
  a.tiles = tiles;
  constexpr size_t smem = bwd_smem_bytes<D, kAtomicDq>();
  auto kernel = flash_backward_kernel<D, kCompact, kAtomicDq, Out>;
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<unsigned(int64_t(n_tiles) * Hk), kThreads, smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH(kCompact ? "flash_backward (compacted keys)" : "flash_backward (raw keys)");
}

template <int D, typename Out>
void launch_dq(const DqArgs& a, int n_tiles, int Hq) {
  constexpr size_t smem = dq_smem_bytes<D>();
  auto kernel = flash_dq_kernel<D, Out>;
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<unsigned(int64_t(n_tiles) * Hq), kThreads, smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("flash_dq");
}

// Both backward launches (compacted blocks first: the raw epilogue reads their dKc/dVc), then
// dQ (deterministic pass, or conversion of the atomic accumulator).
template <int D, typename Out>
void run_backward(const BwdArgs& a, const DqArgs& dq_args, const WorkTables& tables, int Hq, int Hk, bool deterministic,
                  bool has_compact, const Tensor& dq_acc, const Tensor& dq) {
  if (deterministic) {
    if (has_compact) launch_backward<D, true, false, float>(a, tables.bwd_comp(), tables.n_bwd_comp, Hk);
    launch_backward<D, false, false, Out>(a, tables.bwd_raw(), tables.n_bwd_raw, Hk);
    launch_dq<D, Out>(dq_args, tables.n_fwd, Hq);
    return;
  }
  if (has_compact) launch_backward<D, true, true, float>(a, tables.bwd_comp(), tables.n_bwd_comp, Hk);
  launch_backward<D, false, true, Out>(a, tables.bwd_raw(), tables.n_bwd_raw, Hk);
  const int64_t n = dq_acc.numel();
  dq_convert_kernel<Out><<<grid_size(n / 2, 256), 256, 0, current_stream()>>>(
      dq_acc.data_as<float>(), static_cast<Out*>(dq.data()), row_stride(dq), int64_t(Hq) * D, n, a.scale);
  LRSA_CUDA_CHECK_LAUNCH("flash_backward: dq conversion");
}

}  // namespace
}  // namespace attn_detail

void attention_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  using namespace attn_detail;
  const char* op = "attention_backward (CUDA)";
  if (use_wgmma(op, config, q, k, v, layout, wgmma_preferred(config, layout, q.size(2))))
    return wgmma_backward(config, q, k, v, layout, saved, dout, dq, dk, dv);
  const int D = check_kernel_args(op, config, q, k, v, {{"dout", &dout}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}});
  if (cudnn_backward(op, config, q, k, v, layout, saved, dout, dq, dk, dv)) return;
  // auto, where cuDNN cannot run the call: the wgmma kernels before the native ones
  if (use_wgmma(op, config, q, k, v, layout, true))
    return wgmma_backward(config, q, k, v, layout, saved, dout, dq, dk, dv);
  const int64_t T = q.size(0), Hq = q.size(1), Hk = k.size(1);
  const WorkTables& tables = work_tables(config, layout, q.device());
  LRSA_CHECK(std::max<int64_t>(tables.n_fwd, std::max(tables.n_bwd_raw, tables.n_bwd_comp)) * Hq < (int64_t(1) << 31),
             "{}: {} work items x {} heads exceed the grid limit", op, std::max(tables.n_fwd, tables.n_bwd_raw), Hq);
  const Tensor qb = as_bf16(q), kb = as_bf16(k), vb = as_bf16(v), dob = as_bf16(dout);

  Tensor delta = Tensor::empty({Hq, T}, DType::F32, q.device());
  dispatch_float(dout.dtype(), op, [&](auto* tag) {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    const T_ *o = static_cast<const T_*>(saved.out.data()), *d_o = static_cast<const T_*>(dout.data());
    // 16-byte loads where both start 16-byte aligned and so do all their rows
    const bool vectors = aligned16(o) && aligned16(d_o) && row_stride(saved.out) % pack_of<T_> == 0 &&
                         row_stride(dout) % pack_of<T_> == 0;
    delta_kernel<T_><<<delta_blocks<T_>(int(T), int(Hq), D), 256, 0, current_stream()>>>(
        o, row_stride(saved.out), d_o, row_stride(dout), nullptr, int(T), int(Hq), D, int(T), vectors,
        delta.data_as<float>(), DeltaExtras{});
  });
  LRSA_CUDA_CHECK_LAUNCH("flash_backward: delta");

  const Compact comp = config.mode == attn::Mode::Lrsa
                           ? gather_selected(kb, vb, saved.selection, config.lrsa.kept())
                           : Compact{};
  const bool has_compact = comp.rows > 0;
  Tensor inv, part_dk, part_dv;
  if (has_compact) {
    inv = Tensor::empty({Hk, T}, DType::I32, q.device());
    fill(inv, -1.0);
    inverse_map_kernel<<<grid_size(Hk * comp.rows, 256), 256, 0, current_stream()>>>(
        saved.selection.indices.data_as<int32_t>(), comp.rows, int(Hk), int(T), inv.data_as<int32_t>());
    LRSA_CUDA_CHECK_LAUNCH("flash_backward: inverse map");
    part_dk = Tensor::empty({Hk, tables.n_slots, kBlockN, D}, DType::F32, q.device());
    part_dv = Tensor::empty({Hk, tables.n_slots, kBlockN, D}, DType::F32, q.device());
  }
  Tensor dq_acc;
  if (!config.deterministic) {
    dq_acc = Tensor::empty({T, Hq, D}, DType::F32, q.device());
    LRSA_CUDA_CHECK(cudaMemsetAsync(dq_acc.data(), 0, dq_acc.nbytes(), current_stream()));
  }

  const KvSource kv{static_cast<const bf16_t*>(kb.data()),
                    static_cast<const bf16_t*>(vb.data()),
                    has_compact ? static_cast<const bf16_t*>(comp.kc.data()) : nullptr,
                    has_compact ? static_cast<const bf16_t*>(comp.vc.data()) : nullptr,
                    row_stride(kb),
                    row_stride(vb),
                    comp.rows};
  const float scale = 1.f / std::sqrt(float(D)), scale_log2 = scale * kLog2e;
  BwdArgs a{};
  a.q = static_cast<const bf16_t*>(qb.data());
  a.dout = static_cast<const bf16_t*>(dob.data());
  a.q_stride = row_stride(qb);
  a.do_stride = row_stride(dob);
  a.kv = kv;
  a.lse = saved.lse.data_as<float>();
  a.delta = delta.data_as<float>();
  a.dq_acc = dq_acc.defined() ? dq_acc.data_as<float>() : nullptr;
  a.dk = dk.data();
  a.dv = dv.data();
  a.dk_stride = row_stride(dk);
  a.dv_stride = row_stride(dv);
  a.inv = has_compact ? inv.data_as<int32_t>() : nullptr;
  a.part_dk = part_dk.defined() ? part_dk.data_as<float>() : nullptr;
  a.part_dv = part_dv.defined() ? part_dv.data_as<float>() : nullptr;
  a.slot_first = tables.slot_first();
  a.slots = tables.n_slots;
  a.kept = int(config.lrsa.kept());
  a.T = int(T);
  a.Hq = int(Hq);
  a.Hk = int(Hk);
  a.group = int(Hq / Hk);
  a.scale = scale;
  a.scale_log2 = scale_log2;

  DqArgs d{};
  d.q = a.q;
  d.dout = a.dout;
  d.q_stride = a.q_stride;
  d.do_stride = a.do_stride;
  d.kv = kv;
  d.lse = a.lse;
  d.delta = a.delta;
  d.dq = dq.data();
  d.dq_stride = row_stride(dq);
  d.tiles = tables.fwd();
  d.T = a.T;
  d.Hq = a.Hq;
  d.group = a.group;
  d.scale = scale;
  d.scale_log2 = scale_log2;

  const bool f32 = dq.dtype() == DType::F32;
  const bool det = config.deterministic;
  if (D == 64) {
    if (f32) run_backward<64, float>(a, d, tables, int(Hq), int(Hk), det, has_compact, dq_acc, dq);
    else run_backward<64, bf16_t>(a, d, tables, int(Hq), int(Hk), det, has_compact, dq_acc, dq);
  } else {
    if (f32) run_backward<128, float>(a, d, tables, int(Hq), int(Hk), det, has_compact, dq_acc, dq);
    else run_backward<128, bf16_t>(a, d, tables, int(Hq), int(Hk), det, has_compact, dq_acc, dq);
  }
}

}  // namespace lrsa::cuda
