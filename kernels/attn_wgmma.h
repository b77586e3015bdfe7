#pragma once
// Attention on the Hopper kernels of our own (kernels/attn_wgmma_{forward,backward}.cuh): head dim 64
// or 128, bf16, dense causal and LRSA over packed documents, native GQA, any lag, on sm_90 devices.
// attention.backend = "wgmma" selects them (docs/design-attention.md). The backward adds dQ with
// reductions in global memory, whose order varies: not for deterministic mode.
#include <cstdint>
#include <string>
#include <vector>

#include "lrsa/attn/attention.h"

namespace lrsa::cuda {

// The compacted rows [sink | Sel(0) | Sel(1) | ...] of every document, the documents one after the
// other, as the kernels read them: where each document's rows start ([B + 1]), and where each row
// comes from: an absolute row (a sink) when >= 0, else entry -1 - source of each KV head's selection
// (LrsaSelection::indices, [num_parts * K] per head).
struct CompactedRows {
  std::vector<int> start;
  std::vector<int64_t> source;
};
CompactedRows compacted_rows(const std::vector<int64_t>& cu_seqlens, const attn::LrsaParams& params);

// Empty when the wgmma kernels can run a call on these tensors and documents, else the reason.
std::string wgmma_unusable(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                           const attn::SeqLayout& layout);

// Whether auto runs LRSA on the wgmma kernels rather than cuDNN's where both can: over documents up
// to 128K tokens at d64, up to 32K at d128 (measured faster there; dense stays on cuDNN).
bool wgmma_preferred(const attn::AttentionConfig& config, const attn::SeqLayout& layout, int64_t head_dim);

// Whether a call runs on the wgmma kernels: always for Backend::Wgmma (failing with the reason when
// they cannot run it), for Backend::Auto when `auto_takes` and they can.
bool use_wgmma(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
               const attn::SeqLayout& layout, bool auto_takes);

// Same contracts as cuda::attention_forward / attention_backward (lrsa/attn/cuda_attn.h), for calls
// wgmma_unusable accepts. The forward needs result.selection filled (LRSA) and result.out, result.lse
// allocated; the backward gathers the compacted rows again rather than keeping them.
void wgmma_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                   const attn::SeqLayout& layout, attn::AttentionForward& result);
void wgmma_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                    const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                    Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace lrsa::cuda
