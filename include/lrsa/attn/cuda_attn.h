#pragma once
// CUDA attention kernels (kernels/attn_*.cu), same contracts as attention.h. The public
// functions in src/attn validate arguments and dispatch here for CUDA tensors.
// Kernel limits (clear errors otherwise): head dimension 64 or 128; Mode::Lrsa needs lag % 64
// == 0 and lag <= attn::kCudaMaxLag (any sink); rows 16-byte aligned. bf16 is the native dtype;
// f32 inputs are accepted and computed in bf16 (q/k/v/dout converted, outputs written in f32 from
// the f32 accumulators); the selection reads the original values. Design: docs/design-attention.md.
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
