#pragma once
// LRSA forward/backward on cuDNN's dense flash attention (kernels/attn_cudnn.h): "gather then
// dense flash". Each query's visible keys are gathered into Kg / Vg [R, Hk, D] as virtual
// sequences (kernels/attn_lrsa_gather_plan.h) whose masks give exactly the spec's visibility, so
// no pair is computed in vain. Partitions go in groups of 8: the history that the group
// [8b, 8b + 8) shares, [sink | selected rows of partitions 0 .. 8b-2], is one non-causal
// sequence whose queries are all the group's rows (cuDNN's backward runs far faster on long
// query runs, and the history is gathered once per group rather than once per partition); each
// partition q keeps a causal sequence with the rest, [selected rows of 8b-1 .. q-2 | raw
// partition q-1 | raw partition q], bottom-right aligned. The causal sequences run first and
// write out, lse and dq in place; a grouped pass writes out / lse / dQ into buffers (dQ with q's
// row stride), and its out is merged into the causal one by the two parts' lse, its dQ added.
// Backward: gather again, cuDNN's backward gives dKg / dVg, and every source row's dK / dV is
// the sum of its gathered copies in a fixed order (deterministic, no atomics). Memory outside
// the budget: those grouped-pass buffers (the pass's query rows x 2 bytes x Hq x D for out, x
// q's row stride for dQ) and, with several passes, fp32 running sums of dK / dV.
// Passes: the virtual sequences run in consecutive groups, one cuDNN call each, so that a call's
// gathered buffers plus cuDNN's backward workspace fit in attention.cudnn_gather_gib; dK / dV
// sums run on in fp32 across the passes (same order, same bits as one pass). The memory of one
// layer's attention therefore stays bounded however long the documents: 256K and 512K tokens
// run on cuDNN at the default budget.
#ifdef LRSA_WITH_CUDNN
#include <cstdint>

#include "lrsa/attn/attention.h"

namespace lrsa::cuda {

// Partitions per grouped sequence (kernels/attn_lrsa_gather_plan.h): at L = 1024 the shared
// history's key blocks meet 8192 queries in one sequence instead of 1024.
constexpr int64_t kLrsaCudnnGroup = 8;

// Gathered buffers of all passes together: Kg, Vg, dKg, dVg, 4 * R * Hk * D * 2 bytes for R
// gathered rows. R grows like r * T^2 / (16 L) (every group re-reads the selected history): at
// S = 16, L = 1024, r = 0.25 and 2 KV heads of d64, R = 3.1 T at 32K tokens (104 MB), 6.7 T at
// 256K (1.8 GB) and 10.7 T at 512K (5.8 GB); one sequence per partition would gather 6.1 times
// more at 512K. A pass holds its share of them, plus cuDNN's workspace
// (cudnn_backward_workspace_estimate).
int64_t lrsa_cudnn_gather_bytes(const attn::SeqLayout& layout, const attn::LrsaParams& params, int64_t kv_heads,
                                int64_t head_dim);

// True when cuDNN takes this head dimension and dtype (bf16), every virtual sequence alone fits a
// pass within config.cudnn_gather_gib, and the gathered rows stay within i32.
bool lrsa_cudnn_usable(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                       int64_t kv_heads, int64_t head_dim, DType dtype);

// The cuDNN calls (passes) of either direction for this layout and budget (host-side planning).
int64_t lrsa_cudnn_pass_count(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                              int64_t kv_heads, int64_t head_dim);

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
