#pragma once
// Shared pieces of the CUDA attention kernels (kernels/attn_*.cu): PTX wrappers (cp.async,
// ldmatrix, mma.sync m16n8k16 bf16), the swizzled shared-memory layout, the warp-level MMA
// building blocks, the key loop of the forward and dQ kernels, and the host helpers (argument
// checks, f32 -> bf16, gather of the selected rows, the device copy of the work plan of
// attn_plan.h).
//
// Fragment layouts of mma.sync.m16n8k16 (g = lane / 4, c = lane % 4), used throughout:
//   A (16x16, row):  a0 = (g, 2c..2c+1)  a1 = (g+8, 2c..)  a2 = (g, 2c+8..)  a3 = (g+8, 2c+8..)
//   B (16x8, col):   b0 = (k 2c..2c+1, n g)  b1 = (k 2c+8.., n g)
//   C (16x8, f32):   c0,c1 = (g, 2c..2c+1)  c2,c3 = (g+8, 2c..2c+1)
// Two C tiles side by side (16x16) are exactly one A fragment once packed to bf16, which is how
// P feeds P @ V without a trip through shared memory (FlashAttention-2's register reuse).
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "attn_plan.h"
#include "cuda_common.cuh"
#include "lrsa/attn/attention.h"
#include "lrsa/attn/cuda_attn.h"

namespace lrsa::cuda::attn_detail {

using bf16_t = __nv_bfloat16;

constexpr int kThreads = kWarps * 32;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; when !valid the destination is zero-filled and the source
// is not read (it must still be a valid address, callers pass the tensor base).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a @ b, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one register of two bf16, the first in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// The A fragment (16 x 16) made of C tiles n and n+1 of a 16-row accumulator.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}

// ------------------------------------------------------------------------------------------
// Shared memory tiles: rows of W bf16 (W = 64 or 128), stored in 16-byte chunks whose index is
// XORed with (row % 8). ldmatrix reads 8 rows at one column: without the swizzle all 8 would hit
// the same banks (rows are 128 or 256 bytes apart).

template <int W>
__device__ __forceinline__ int swz(int row, int col) {
  static_assert(W % 64 == 0, "swizzle needs at least 8 chunks of 8 columns per row");
  return row * W + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

// Copies rows [0, rows) of a ROWS x W tile from global (row r at src + r * stride) into swizzled
// shared memory; rows >= `rows` are zero-filled. All kThreads threads take part.
template <int ROWS, int W>
__device__ __forceinline__ void load_tile_async(bf16_t* tile, const bf16_t* src, int64_t stride, int rows) {
  constexpr int kChunks = W / 8;
  const uint32_t base = smem_addr(tile);
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, ch = i % kChunks;
    const bool valid = r < rows;
    const bf16_t* g = valid ? src + int64_t(r) * stride + ch * 8 : src;
    cp_async16(base + uint32_t(swz<W>(r, ch * 8)) * 2u, g, valid);
  }
}

// ldmatrix addressing (see the fragment layouts at the top). `lane` is the lane id.
// A operand (16x16 at (r0, k0)) of a row-major tile, or B operand for two n-tiles when the tile
// holds B^T row-major ([n][k]) at (n0 = r0, k0): same address pattern, different register order.
template <int W>
__device__ __forceinline__ uint32_t addr_a(uint32_t base, int r0, int k0, int lane) {
  return base + uint32_t(swz<W>(r0 + (lane & 15), k0 + (lane >> 4) * 8)) * 2u;
}
// B^T row-major [n][k], x4 = n-tiles n0 and n0+8: {r0, r1} = b of n0, {r2, r3} = b of n0 + 8.
template <int W>
__device__ __forceinline__ uint32_t addr_bt(uint32_t base, int n0, int k0, int lane) {
  return base + uint32_t(swz<W>(n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8)) * 2u;
}
// B row-major [k][n] read with .trans, x4 = n-tiles n0 and n0+8: {r0, r1} = b of n0,
// {r2, r3} = b of n0 + 8.
template <int W>
__device__ __forceinline__ uint32_t addr_b_trans(uint32_t base, int k0, int n0, int lane) {
  return base + uint32_t(swz<W>(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8)) * 2u;
}
// A from A^T row-major [k][m] read with .trans: {r0..r3} = a0..a3 of the 16x16 block at (m0, k0).
template <int W>
__device__ __forceinline__ uint32_t addr_at_trans(uint32_t base, int m0, int k0, int lane) {
  return base + uint32_t(swz<W>(k0 + (lane & 7) + (lane >> 4) * 8, m0 + ((lane >> 3) & 1) * 8)) * 2u;
}

// Sum / max over the four lanes of a quad (the lanes that share accumulator rows).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

// Stores two adjacent output elements (columns col, col + 1) as Out (bf16 or f32).
template <typename Out>
__device__ __forceinline__ void store2(Out* p, float a, float b) {
  if constexpr (std::is_same_v<Out, bf16_t>) *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  else *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

struct KvSource {
  const bf16_t* k;   // raw keys, row r of head hk at k + r * k_stride + hk * D
  const bf16_t* v;
  const bf16_t* kc;  // compact keys [Hk, comp_rows, D]
  const bf16_t* vc;
  int64_t k_stride, v_stride;
  int comp_rows;
};

// Copies key block b of KV head hk (K and V) into shared memory, zero-filling past b.rows.
template <int D>
__device__ __forceinline__ void load_key_block(bf16_t* k_tile, bf16_t* v_tile, const KeyBlock& b, const KvSource& s,
                                               int hk) {
  if (b.compact) {
    const int64_t off = (int64_t(hk) * s.comp_rows + b.row0) * D;
    load_tile_async<kBlockN, D>(k_tile, s.kc + off, D, b.rows);
    load_tile_async<kBlockN, D>(v_tile, s.vc + off, D, b.rows);
  } else {
    load_tile_async<kBlockN, D>(k_tile, s.k + int64_t(b.row0) * s.k_stride + int64_t(hk) * D, s.k_stride, b.rows);
    load_tile_async<kBlockN, D>(v_tile, s.v + int64_t(b.row0) * s.v_stride + int64_t(hk) * D, s.v_stride, b.rows);
  }
}

// s (16 x N) += A (16 x 16 k-slice, fragment in registers) @ Bt[0..N)[k0..k0+16)^T, where the
// shared-memory tile Bt (rows of W elements) holds B^T row-major.
template <int W, int N>
__device__ __forceinline__ void mma_a_bt(float (&s)[N / 8][4], const uint32_t (&af)[4], uint32_t bt_addr, int k0,
                                         int lane) {
#pragma unroll
  for (int np = 0; np < N / 16; ++np) {
    uint32_t b[4];
    ldmatrix_x4(b, addr_bt<W>(bt_addr, np * 16, k0, lane));
    mma_bf16(s[2 * np], af, b[0], b[1]);
    mma_bf16(s[2 * np + 1], af, b[2], b[3]);
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&s)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
}

// S = Q K^T for one warp: 16 query rows (fragments in registers) x kBlockN keys (K tile in
// shared memory, [keys][D]). s[n] is the C tile of keys 8n .. 8n+7. Also dP = dO V^T.
template <int D>
__device__ __forceinline__ void qk_scores(float (&s)[kBlockN / 8][4], const uint32_t (&qf)[D / 16][4],
                                          uint32_t k_addr, int lane) {
  zero(s);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) mma_a_bt<D, kBlockN>(s, qf[ks], k_addr, ks * 16, lane);
}

// s (16 x N) = A[row0 .. row0+16)[0..D) @ Bt[0..N)[0..D)^T with both operands in shared memory
// (rows of D elements): the backward's S^T = K Q^T and dP^T = V dO^T, the dQ pass's dO V^T.
template <int D, int N>
__device__ __forceinline__ void smem_scores(float (&s)[N / 8][4], uint32_t a_addr, int row0, uint32_t bt_addr,
                                            int lane) {
  zero(s);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t af[4];
    ldmatrix_x4(af, addr_a<D>(a_addr, row0, ks * 16, lane));
    mma_a_bt<D, N>(s, af, bt_addr, ks * 16, lane);
  }
}

// acc (16 x D) += P (16 x N, C tiles in registers) @ X (N x D row-major tile in shared memory).
template <int D, int N>
__device__ __forceinline__ void pv_accumulate(float (&acc)[D / 8][4], const float (&p)[N / 8][4], uint32_t x_addr,
                                              int lane) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t a[4];
    c_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, addr_b_trans<D>(x_addr, kk * 16, dp * 16, lane));
      mma_bf16(acc[2 * dp], a, b[0], b[1]);
      mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Loads a warp's 16 rows of a (kBlockM x D) tile in shared memory as A fragments.
template <int D>
__device__ __forceinline__ void load_a_rows(uint32_t (&f)[D / 16][4], uint32_t base, int row0, int lane) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(f[ks], addr_a<D>(base, row0, ks * 16, lane));
}

// Visibility of element (row i of the warp's 16 query rows, key column) of a key block against
// query rows; applied only to blocks that need it (partial, or crossing the diagonal).
// s[n][e]: row g (e < 2) or g + 8 (e >= 2), column 8n + 2c + (e & 1).
template <typename Fn>
__device__ __forceinline__ void apply_mask(float (&s)[kBlockN / 8][4], int lane, Fn&& visible) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int n = 0; n < kBlockN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (!visible(g + (e >> 1) * 8, n * 8 + 2 * c + (e & 1))) s[n][e] = -INFINITY;
}

// The key loop of the forward and dQ kernels: visits every key block of tile t with K and V
// double-buffered in shared memory (block n + 1 is copied while block n is computed). The
// caller has already issued (and committed) its own query-side copies, which are complete when
// body(0, ...) runs. body(n, block, k_smem_addr, v_smem_addr) runs on all threads.
template <int D, typename Body>
__device__ __forceinline__ void for_each_key_block(const FwdTile& t, int hk, const KvSource& kv, bf16_t* k_tile,
                                                   bf16_t* v_tile, Body&& body) {
  const KeyBlocks kb(t);
  const int n_blocks = kb.count();
  KeyBlock cur = key_block(t, kb, 0);
  load_key_block<D>(k_tile, v_tile, cur, kv, hk);
  cp_async_commit();
  for (int n = 0; n < n_blocks; ++n) {
    const int buf = n & 1;
    KeyBlock next = cur;
    if (n + 1 < n_blocks) {
      next = key_block(t, kb, n + 1);
      load_key_block<D>(k_tile + (buf ^ 1) * kBlockN * D, v_tile + (buf ^ 1) * kBlockN * D, next, kv, hk);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    body(n, cur, smem_addr(k_tile + buf * kBlockN * D), smem_addr(v_tile + buf * kBlockN * D));
    __syncthreads();  // the next iteration's copy overwrites this buffer
    cur = next;
  }
}

// ------------------------------------------------------------------------------------------
// Host side

// Element row stride of a [T, H, D] tensor whose last two dimensions are contiguous.
int64_t row_stride(const Tensor& t);

// What the kernels need beyond the public checks (src/attn): head dimension 64 or 128, lag a
// multiple of kBlockN, 16-byte aligned rows of q/k/v and of the outputs. Selects q's device and
// returns D.
int check_kernel_args(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                      const Tensor& v, std::initializer_list<std::pair<const char*, const Tensor*>> outputs);

// Attention on cuDNN when config.backend allows it and cuDNN can run the call: dense through
// kernels/attn_cudnn.h, LRSA by gathering each query partition's keys (kernels/attn_lrsa_cudnn.h).
// Returns true when it ran. Backend::Cudnn fails, saying why, when cuDNN cannot (no cuDNN in the
// build, deterministic, f32, head dim, device, LRSA's gather budget); Auto then runs the native
// kernels.
bool cudnn_forward(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                   const Tensor& v, const attn::SeqLayout& layout, attn::AttentionForward& result);
bool cudnn_backward(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                    const Tensor& v, const attn::SeqLayout& layout, const attn::AttentionForward& saved,
                    const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv);

// bf16 view of t: t itself when already bf16, else a contiguous bf16 copy (f32 inputs are
// computed in bf16 on the GPU; see cuda_attn.h).
Tensor as_bf16(const Tensor& t);

// Compacted history of one layer: the selected rows of every KV head, gathered once so the
// kernels read them as dense tiles. kc, vc bf16 [Hk, num_parts * K, D].
struct Compact {
  Tensor kc, vc;
  int rows = 0;  // num_parts * K
};
Compact gather_selected(const Tensor& k, const Tensor& v, const attn::LrsaSelection& sel, int64_t kept);

// The plan of one batch layout on the device, uploaded once and cached per layout.
struct WorkTables {
  int n_fwd = 0, n_bwd_raw = 0, n_bwd_comp = 0, n_parts = 0, n_slots = 0;
  Tensor device;  // i32, the tables back to back
  const FwdTile* fwd() const;
  const BwdTile* bwd_raw() const;
  const BwdTile* bwd_comp() const;
  const int* part_start() const;  // [n_parts] first row of each selectable partition
  const int* slot_first() const;  // [compact blocks + 1] partial-sum slots of each compact block
  int64_t fwd_off = 0, raw_off = 0, comp_off = 0, part_off = 0, slot_off = 0;  // in i32 units
};
const WorkTables& work_tables(const attn::AttentionConfig& config, const attn::SeqLayout& layout, Device device);

}  // namespace lrsa::cuda::attn_detail
