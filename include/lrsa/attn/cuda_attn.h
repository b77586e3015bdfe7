#pragma once
// CUDA attention kernels (kernels/attn_*.cu), same contracts as attention.h. The public
// functions in src/attn validate arguments and dispatch here for CUDA tensors.
#ifdef LRSA_WITH_CUDA
#include "lrsa/attn/attention.h"

namespace lrsa::cuda {

// LagKV selection for every (KV head, selectable partition): indices i32 [Hk, num_parts, K].
void lrsa_select(const Tensor& k, const Tensor& v, const attn::SeqLayout& layout, const attn::LrsaParams& params,
                 attn::LrsaSelection& selection);

// Flash-style forward/backward. For Mode::Lrsa each query tile visits [sink | selected rows of
// partitions <= q-2 | raw partitions q-1 and q (causal)].
void attention_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                       const attn::SeqLayout& layout, attn::AttentionForward& result);
void attention_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace lrsa::cuda
#endif
