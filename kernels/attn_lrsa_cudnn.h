#pragma once
// LRSA forward/backward on cuDNN's dense flash attention (kernels/attn_cudnn.h): "gather then
// dense flash". In the forward every (document, query partition) becomes one virtual causal
// sequence whose keys are gathered into Kg / Vg [R, Hk, D] as [sink | selected rows of partitions
// 0..q-2 | raw partition q-1 | raw partition q] (kernels/attn_lrsa_gather_plan.h), so cuDNN's
// bottom-right causal mask gives exactly the spec's visibility and no pair is computed in vain.
// The query rows stay where they are (out is written in place, lse too when there is one pass).
// Backward: gather again, cuDNN's backward gives dKg / dVg, and every source row's dK / dV is the
// sum of its gathered copies in a fixed order (deterministic, no atomics). The backward groups 8
// partitions: their shared history is one non-causal sequence of 8L queries (cuDNN's backward
// runs far faster on long query runs), each partition keeps a causal sequence for the rest
// (whose dQ is written in place), and the grouped sequences' dQ, computed in a buffer with q's
// row stride, is added to it. Memory outside the budget: that buffer (grouped passes' query rows
// x q's row width x 2 bytes) and, with several passes, fp32 running sums of dK / dV.
// Passes: the virtual sequences run in consecutive groups, one cuDNN call each, so that a call's
// gathered buffers plus cuDNN's backward workspace fit in attention.cudnn_gather_gib; dK / dV
// sums run on in fp32 across the passes (same order, same bits as one pass). The memory of one
// layer's attention therefore stays bounded however long the documents: 256K and 512K tokens
// run on cuDNN at the default budget.
#ifdef LRSA_WITH_CUDNN
#include <cstdint>

#include "lrsa/attn/attention.h"

namespace lrsa::cuda {

// Partitions per grouped sequence of the backward (kernels/attn_lrsa_gather_plan.h): at L = 1024
// the shared history's key blocks meet 8192 queries in one sequence instead of 1024.
constexpr int64_t kLrsaCudnnBackwardGroup = 8;

// Gathered buffers of all passes of one direction together: Kg, Vg, dKg, dVg, 4 * R * Hk * D * 2
// bytes for R gathered rows. In the forward R grows like r * T^2 / (2L) (every query partition
// re-reads the whole selected history): at S = 16, L = 1024, r = 0.25 and 2 KV heads of d64,
// R = 5.6 T at 32K tokens (187 MB), 17.6 T at 128K (2.4 GB), 34 T at 256K (9.0 GB) and 66 T at
// 512K (35 GB); the backward's groups share their history: 3.8 times fewer rows at 128K, 6.1
// times fewer at 512K. A pass holds its share of them, plus cuDNN's workspace
// (cudnn_backward_workspace_estimate).
int64_t lrsa_cudnn_gather_bytes(const attn::SeqLayout& layout, const attn::LrsaParams& params, int64_t kv_heads,
                                int64_t head_dim, bool backward);

// True when cuDNN takes this head dimension and dtype (bf16), every virtual sequence of either
// direction alone fits a pass within config.cudnn_gather_gib, and the gathered rows stay within i32.
bool lrsa_cudnn_usable(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                       int64_t kv_heads, int64_t head_dim, DType dtype);

// The cuDNN calls (passes) of one direction for this layout and budget (host-side planning).
int64_t lrsa_cudnn_pass_count(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                              int64_t kv_heads, int64_t head_dim, bool backward);

// Mode::Lrsa forward: result.selection already filled, result.out [T, Hq, D] and result.lse
// [Hq, T] allocated (as cuda::attention_forward receives them).
void lrsa_cudnn_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const attn::SeqLayout& layout, attn::AttentionForward& result);

// Mode::Lrsa backward: dq [T, Hq, D], dk and dv [T, Hk, D] allocated, overwritten. Gathers
// Kg / Vg again rather than keeping them from the forward.
void lrsa_cudnn_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                         const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                         Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace lrsa::cuda
#endif
