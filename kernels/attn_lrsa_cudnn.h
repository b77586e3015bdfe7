#pragma once
// LRSA forward/backward on cuDNN's dense flash attention (kernels/attn_cudnn.h): "gather then
// dense flash". Every (document, query partition) becomes one virtual causal sequence whose
// keys are gathered into Kg / Vg [R, Hk, D] as [sink | selected rows of partitions 0..q-2 | raw
// partition q-1 | raw partition q] (kernels/attn_lrsa_gather_plan.h), so cuDNN's bottom-right
// causal mask gives exactly the spec's visibility and no pair is computed in vain. The query
// rows stay where they are (out, lse and dq are written in place). Backward: gather again,
// cuDNN's backward gives dKg / dVg, and every source row's dK / dV is the sum of its gathered
// copies in a fixed order (deterministic, no atomics).
#ifdef LRSA_WITH_CUDNN
#include <cstdint>

#include "lrsa/attn/attention.h"

namespace lrsa::cuda {

// Memory: the backward holds Kg, Vg, dKg, dVg at once, 4 * R * Hk * D * 2 bytes for R gathered
// rows, one layer's transient buffers. R grows like r * T^2 / (2L) (every query partition
// re-reads the whole selected history): at S = 16, L = 1024, r = 0.25 and 2 KV heads of d64,
// R = 5.6 T at 32K tokens (187 MB), 17.6 T at 128K (2.4 GB), 34 T at 256K (9.0 GB) and 66 T at
// 512K (35 GB).
int64_t lrsa_cudnn_gather_bytes(const attn::SeqLayout& layout, const attn::LrsaParams& params, int64_t kv_heads,
                                int64_t head_dim);

// True when cuDNN takes this head dimension and dtype (bf16) and the gathered buffers fit in
// config.cudnn_gather_gib.
bool lrsa_cudnn_usable(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t kv_heads,
                       int64_t head_dim, DType dtype);

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
