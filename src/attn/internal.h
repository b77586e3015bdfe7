#pragma once
// Shared argument checks and the CPU implementations behind the public functions of
// lrsa/attn/attention.h (which validate, then dispatch to lrsa::cuda or here).
#include "lrsa/attn/attention.h"

namespace lrsa::attn::detail {

// Sizes of one attention call: q [T, Hq, D], k and v [T, Hk, D].
struct AttnDims {
  int64_t T = 0, Hq = 0, Hk = 0, D = 0;
  DType dtype = DType::F32;
  Device device;
};

// Throws unless t is a [T, H, D] tensor of `dtype` on `device` whose last two dimensions are
// contiguous (row stride >= H * D, so views into a fused QKV buffer are accepted).
void check_heads(const Tensor& t, const char* op, const char* name, int64_t T, int64_t H, int64_t D, DType dtype,
                 Device device);

// k and v (and q when defined) against each other and the layout; returns their sizes
// (Hq = Hk when q is undefined).
AttnDims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const SeqLayout& layout);

// Part offsets of the selectable partitions of every document: [B + 1].
std::vector<int64_t> selection_part_offsets(const SeqLayout& layout, const LrsaParams& params);

// A selection (saved for backward, or given by a caller) against the layout and parameters.
void check_selection(const char* op, const LrsaSelection& selection, const SeqLayout& layout,
                     const LrsaParams& params, int64_t Hk, Device device);

// CPU kernels; arguments already validated, outputs allocated.
void lrsa_select_cpu(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params,
                     LrsaSelection& selection);
void attention_forward_cpu(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                           const SeqLayout& layout, AttentionForward& result);
void attention_backward_cpu(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                            const SeqLayout& layout, const AttentionForward& saved, const Tensor& dout, Tensor& dq,
                            Tensor& dk, Tensor& dv);

}  // namespace lrsa::attn::detail
