// Flash attention forward (FlashAttention-2 style) for dense causal and LRSA attention over a
// packed batch, native GQA. One CTA = kBlockM query rows of one document and one query head;
// 4 warps, each owning 16 rows. The CTA walks the key blocks its rows see (attn_common.cuh,
// FwdTile): for LRSA [sink | compacted history of partitions <= q-2 | raw partitions q-1, q],
// K/V double-buffered in shared memory through cp.async, S = Q K^T and O += P V on bf16
// mma.sync with fp32 accumulators, online softmax in base 2 with the 1/sqrt(d) scale folded
// into the exponent. Query tiles never straddle a partition (lag % kBlockN == 0), so only
// partial blocks and the causal diagonal need a per-element mask.
#include "attn_common.cuh"
#include "attn_wgmma.h"

namespace lrsa::cuda {
namespace attn_detail {
namespace {

struct FwdArgs {
  const bf16_t* q;
  int64_t q_stride;
  KvSource kv;
  void* out;  // [T, Hq, D] Out
  int64_t out_stride;
  float* lse;  // [Hq, T]
  const FwdTile* tiles;
  int T, Hq, group;
  float scale_log2;  // log2(e) / sqrt(D)
};

template <int D>
constexpr size_t fwd_smem_bytes() {
  return size_t(kBlockM + 4 * kBlockN) * D * sizeof(bf16_t);  // Q, K[2], V[2]
}

template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 2) flash_forward_kernel(const FwdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16_t* q_tile = reinterpret_cast<bf16_t*>(smem);  // [kBlockM][D]
  bf16_t* k_tile = q_tile + kBlockM * D;              // [2][kBlockN][D]
  bf16_t* v_tile = k_tile + 2 * kBlockN * D;          // [2][kBlockN][D]

  // Block = (tile, head), head fastest: the heaviest tiles of every head start first, and the
  // heads of a GQA group, which read the same K/V, run side by side.
  const FwdTile t = a.tiles[blockIdx.x / a.Hq];
  const int h = blockIdx.x % a.Hq, hk = h / a.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int q_first = t.q0 + warp * 16;  // absolute row of this warp's first query

  load_tile_async<kBlockM, D>(q_tile, a.q + int64_t(t.q0) * a.q_stride + int64_t(h) * D, a.q_stride, t.q1 - t.q0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float acc[D / 8][4];
  zero(acc);
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of the raw scores, rows g and g + 8
  float row_sum[2] = {0.f, 0.f};              // this thread's share of the running sums

  for_each_key_block<D>(t, hk, a.kv, k_tile, v_tile, [&](int n, const KeyBlock& b, uint32_t k_addr, uint32_t v_addr) {
    if (n == 0) load_a_rows<D>(qf, smem_addr(q_tile), warp * 16, lane);
    float s[kBlockN / 8][4];
    qk_scores<D>(s, qf, k_addr, lane);
    if (block_needs_mask(b, q_first))
      apply_mask(s, lane, [&](int r, int col) { return block_visible(b, q_first + r, col); });

    float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[j][e]);
    float alpha[2], shift[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = quad_max(tile_max[i]);
      // A row with every key masked so far keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
      shift[i] = tile_max[i] == -INFINITY ? 0.f : tile_max[i] * a.scale_log2;
      alpha[i] = exp2f(row_max[i] * a.scale_log2 - shift[i]);
      row_max[i] = tile_max[i];
    }
    float tile_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(fmaf(s[j][e], a.scale_log2, -shift[e >> 1]));
        tile_sum[e >> 1] += s[j][e];
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) row_sum[i] = row_sum[i] * alpha[i] + tile_sum[i];
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      acc[d][0] *= alpha[0];
      acc[d][1] *= alpha[0];
      acc[d][2] *= alpha[1];
      acc[d][3] *= alpha[1];
    }
    pv_accumulate<D, kBlockN>(acc, s, v_addr, lane);
  });

  Out* out = static_cast<Out*>(a.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float sum = quad_sum(row_sum[i]);
    const int row = q_first + g + 8 * i;
    if (row >= t.q1) continue;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    Out* o = out + int64_t(row) * a.out_stride + int64_t(h) * D;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) store2(o + d * 8 + 2 * c, acc[d][2 * i] * inv, acc[d][2 * i + 1] * inv);
    if (c == 0) a.lse[int64_t(h) * a.T + row] = (row_max[i] * a.scale_log2 + log2f(sum)) * kLn2;
  }
}

template <int D, typename Out>
void launch_forward(const FwdArgs& a, int n_tiles, int Hq) {
  constexpr size_t smem = fwd_smem_bytes<D>();
  LRSA_CUDA_CHECK(
      cudaFuncSetAttribute(flash_forward_kernel<D, Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  flash_forward_kernel<D, Out><<<unsigned(int64_t(n_tiles) * Hq), kThreads, smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("flash_forward");
}

}  // namespace
}  // namespace attn_detail

void attention_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                       const attn::SeqLayout& layout, attn::AttentionForward& result) {
  using namespace attn_detail;
  const char* op = "attention_forward (CUDA)";
  if (use_wgmma(op, config, q, k, v, layout, wgmma_preferred(config, layout, q.size(2))))
    return wgmma_forward(config, q, k, v, layout, result);
  const int D = check_kernel_args(op, config, q, k, v, {{"result.out", &result.out}});
  if (cudnn_forward(op, config, q, k, v, layout, result)) return;
  // auto, where cuDNN cannot run the call: the wgmma kernels before the native ones
  if (use_wgmma(op, config, q, k, v, layout, true)) return wgmma_forward(config, q, k, v, layout, result);
  const int64_t T = q.size(0), Hq = q.size(1), Hk = k.size(1);
  const WorkTables& tables = work_tables(config, layout, q.device());
  const Tensor qb = as_bf16(q), kb = as_bf16(k), vb = as_bf16(v);
  const Compact comp = config.mode == attn::Mode::Lrsa
                           ? gather_selected(kb, vb, result.selection, config.lrsa.kept())
                           : Compact{};

  FwdArgs a{};
  a.q = static_cast<const bf16_t*>(qb.data());
  a.q_stride = row_stride(qb);
  a.kv = KvSource{static_cast<const bf16_t*>(kb.data()),
                  static_cast<const bf16_t*>(vb.data()),
                  comp.rows > 0 ? static_cast<const bf16_t*>(comp.kc.data()) : nullptr,
                  comp.rows > 0 ? static_cast<const bf16_t*>(comp.vc.data()) : nullptr,
                  row_stride(kb),
                  row_stride(vb),
                  comp.rows};
  a.out = result.out.data();
  a.out_stride = row_stride(result.out);
  a.lse = result.lse.data_as<float>();
  a.tiles = tables.fwd();
  a.T = int(T);
  a.Hq = int(Hq);
  a.group = int(Hq / Hk);
  a.scale_log2 = kLog2e / std::sqrt(float(D));
  const bool f32 = result.out.dtype() == DType::F32;
  if (D == 64) f32 ? launch_forward<64, float>(a, tables.n_fwd, int(Hq)) : launch_forward<64, bf16_t>(a, tables.n_fwd, int(Hq));
  else f32 ? launch_forward<128, float>(a, tables.n_fwd, int(Hq)) : launch_forward<128, bf16_t>(a, tables.n_fwd, int(Hq));
}

}  // namespace lrsa::cuda
