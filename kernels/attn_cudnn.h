#pragma once
// cuDNN SDPA (Hopper flash kernels, through the header-only cudnn-frontend graph API) behind a
// FlashAttention-style varlen interface: B sequences packed along the token axis, causal with
// bottom-right alignment (or not causal), native GQA, bf16 in and out, f32 log-sum-exp in our [Hq, Tq] layout.
// Used by the dense CUDA attention (Backend::Cudnn, kernels/attn_cudnn.cu) and by the LRSA path
// that gathers the visible keys of its virtual sequences (kernels/attn_lrsa_cudnn.cu).
//
// cuDNN constraints (from the cudnn-frontend 1.32 support checks and the cuDNN attention docs):
// - bf16, head dim 64 or 128 (what our kernels and the config accept; cuDNN itself takes more);
//   sm_90 or newer device (the Hopper engines; cuDNN also runs on sm_80 but we do not test it).
// - Rows of q/k/v/out/dout/dq/dk/dv: last two dims contiguous, row stride a multiple of 8
//   elements, base pointers 16-byte aligned (the engines load 16-byte vectors). Packed
//   (ragged) backward: dq with q's row stride (cuDNN 9.14 gave NaN dQ otherwise; checked).
// - Each causal sequence needs len_kv_b >= len_q_b >= 1: with bottom-right alignment, query i
//   sees keys [0, len_kv - len_q + i], so len_q > len_kv would leave the first rows with no key
//   (their lse would be -inf). Empty sequences (len 0) are untested with cuDNN: callers must not
//   pass them.
// - No deterministic mode here: Backend::Cudnn with AttentionConfig::deterministic is rejected
//   (cuDNN's backward accumulates dQ with atomics; see attention.h).
// - Graphs are built once per (direction, causal or not, device, Hq, Hk, D, row strides, B, max
//   lengths and total rows each rounded up to one of 8 steps per power of two, scale) and cached
//   (256 per thread); a new batch size B therefore builds a new graph (host-side cuDNN plan
//   building, once per key: keep B stable where possible).
// - Needs cuDNN >= 9.6 for bottom-right alignment with lengths that are not multiples of 64
//   (frontend support check); our targets have 9.14 (GPU machine) and 9.19 (this machine).
#ifdef LRSA_WITH_CUDNN
#include <cstdint>

#include "lrsa/core/tensor.h"

namespace lrsa::cuda {

// True when built with cuDNN and the shape is supported (head_dim 64 or 128, bf16, sm_90+ device).
bool cudnn_attention_supported(int64_t head_dim, DType dtype);

// Graph dims (longest sequences, total rows) round up to one of 8 steps per power of two: a
// varying batch builds few graphs, and the padding stays under 1/8. (cuDNN's backward workspace
// grows with B x the longest key sequence: rounding to a power of two could double it.)
int64_t cudnn_graph_dim(int64_t n);

// What cuDNN's varlen backward asks for as workspace, as measured: fp32 dK/dV per query head
// over batch x the longest key sequence (padded) plus fp32 dQ, each at graph dims. cuDNN asked
// for 115,854 MiB for 255 sequences of up to 67,072 keys, 14 query heads of d64 and 256K queries
// when graph dims were powers of two; at those dims (131,072 and 262,144) this gives 115,136 MiB.
// Used to size LRSA's passes (kernels/attn_lrsa_cudnn.h).
int64_t cudnn_backward_workspace_estimate(int64_t batch, int64_t max_seqlen_kv, int64_t total_q, int64_t q_heads,
                                          int64_t head_dim);

// B sequences packed FlashAttention-varlen style: sequence b has query rows
// [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q/out/dout/dq/lse and key rows
// [cu_seqlens_kv[b], cu_seqlens_kv[b+1]) of k/v/dk/dv. Causal, bottom-right aligned:
// query i of sequence b sees key j iff j <= (len_kv_b - len_q_b) + i  (equal lengths = ordinary causal).
// Every sequence must have 1 <= len_q_b <= len_kv_b (see above). Not causal: every query sees
// every key of its sequence (any lengths >= 1). Query rows may have gaps, before and between
// sequences: q_starts[b] is then the first query row of sequence b (its length still from
// cu_seqlens_q) and q_starts[B] the end of the last one. The caller guarantees that they are
// non-decreasing, that each sequence ends by the next one's start and that q_starts[B] <= Tq
// (they stay on the device, unchecked). Rows in the gaps are untouched, but for the forward's
// lse, which is -inf there up to q_starts[B].
struct VarlenSpans {
  Tensor cu_seqlens_q;   // i32 [B + 1] on the device, starts at 0, non-decreasing
  Tensor cu_seqlens_kv;  // i32 [B + 1] on the device
  int64_t batch = 0, max_seqlen_q = 0, max_seqlen_kv = 0;  // host copies of what the kernels need
  bool causal = true;
  Tensor q_starts;  // optional i32 [B + 1] on the device
};

// q [Tq, Hq, D], k/v [Tk, Hk, D] bf16 (last two dims contiguous; row stride may exceed H*D: views
// into a fused QKV buffer), GQA (Hq % Hk == 0). Writes out [Tq, Hq, D] and lse [Hq, Tq] f32
// (natural-log log-sum-exp of the scaled scores, our layout) for every query row covered by the spans.
void cudnn_varlen_forward(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenSpans& spans,
                          float scale, Tensor& out, Tensor& lse);

// Overwrites dq [Tq,Hq,D], dk/dv [Tk,Hk,D] (rows not covered by any span are left untouched).
void cudnn_varlen_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                           const Tensor& dout, const VarlenSpans& spans, float scale, Tensor& dq, Tensor& dk,
                           Tensor& dv);

}  // namespace lrsa::cuda
#endif
