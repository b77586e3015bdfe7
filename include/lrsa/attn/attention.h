#pragma once
// The one attention interface of the model: dense causal or LRSA (../shared/lrsa-spec.md, copied
// in docs/lrsa-spec.md), over a packed batch of documents, native GQA, fp32 accumulation.
//
// Layout: q [T, Hq, D], k and v [T, Hk, D], out [T, Hq, D] (f32 or bf16, one dtype; the last two
// dimensions contiguous, so q/k/v may be views into one fused QKV buffer), Hq % Hk == 0.
// Documents: cu_seqlens [B + 1] (0 = s_0 < s_1 < ... < s_B = T); positions, partitions,
// selection and visibility restart at every document start; no key is visible across documents.
// Saved for backward: out, lse [Hq, T] f32 (log-sum-exp of the scaled scores in natural log) and
// the LRSA selection. Never a T x T tensor.
#include <cstdint>
#include <vector>

#include "lrsa/core/tensor.h"

namespace lrsa::attn {

enum class Mode { Dense, Lrsa };

// Which CUDA implementation runs attention (the CPU has one). Auto: LRSA over documents up to 128K
// tokens at head dim 64, up to 32K at 128, on the Hopper kernels of our own where they apply (bf16,
// an sm_90 device, not deterministic); everything else on cuDNN where supported and not
// deterministic (bf16, head dim 64 or 128, sm_90+, a build with cuDNN), else on the Hopper kernels
// where they apply, else on the native kernels. Cudnn and Wgmma (kernels/attn_cudnn.h,
// kernels/attn_wgmma.h) fail with the reason when they cannot run the call.
enum class Backend { Auto, Native, Cudnn, Wgmma };

// The backends' names as users write them (the config's attention.backend, lrsa-bench's --backends).
struct BackendName {
  Backend backend;
  const char* name;
};
inline constexpr BackendName kBackendNames[] = {
    {Backend::Auto, "auto"}, {Backend::Native, "native"}, {Backend::Cudnn, "cudnn"}, {Backend::Wgmma, "wgmma"}};
inline const char* backend_name(Backend backend) {
  for (const BackendName& n : kBackendNames)
    if (n.backend == backend) return n.name;
  return "?";
}

struct LrsaParams {
  int64_t sink = 16;          // S >= 0
  int64_t lag = 1024;         // L >= 1
  double ratio = 0.25;        // 0 < r <= 1
  float score_v_ratio = 1.0f; // lambda
  int64_t kept() const;       // K = floor(r * L)
  void validate() const;      // rejects K < 1, L < 1, S < 0, r outside (0, 1] with a clear error
};

// The CUDA selection sorts a partition's rows in one thread block, at most 8192 of them
// (kernels/attn_select.cu): the longest lag on the GPU.
constexpr int64_t kCudaMaxLag = 8192;

// LRSA on cuDNN copies the visible keys of each query partition (and the history each group of
// partitions shares) into gathered buffers, four of them per layer in the backward
// (kernels/attn_lrsa_cudnn.h), and they grow like T^2, as does cuDNN's backward workspace. So
// these virtual sequences run in passes, one cuDNN call each, whose gathered keys and estimated
// workspace fit in AttentionConfig::cudnn_gather_gib; auto runs LRSA on the native kernels only
// when one virtual sequence alone needs more (docs/config.md). The ceiling keeps each
// pass's buffers within 2^31 elements.
constexpr double kDefaultCudnnGatherGib = 4;
constexpr double kMaxCudnnGatherGib = 16;

struct AttentionConfig {
  Mode mode = Mode::Dense;
  LrsaParams lrsa;
  bool deterministic = false;  // CUDA: no atomics in reductions whose order could vary
  Backend backend = Backend::Auto;
  double cudnn_gather_gib = kDefaultCudnnGatherGib;  // (0, kMaxCudnnGatherGib]
};

// Document boundaries of a packed batch, on the host and (for CUDA) on the device.
struct SeqLayout {
  std::vector<int64_t> cu_seqlens;  // [B + 1]
  Tensor cu_seqlens_device;         // i32 [B + 1] on the attention device (undefined on CPU)
  int64_t total() const { return cu_seqlens.empty() ? 0 : cu_seqlens.back(); }
  int64_t max_seqlen() const;
  static SeqLayout single(int64_t tokens, Device device = Device::cpu());
  static SeqLayout from_lengths(const std::vector<int64_t>& lengths, Device device = Device::cpu());
  // Throws (naming `op`) unless cu_seqlens starts at 0, is strictly increasing and ends at
  // `tokens`, and, for a CUDA `device`, cu_seqlens_device is i32 [B + 1] on it.
  void validate(const char* op, int64_t tokens, Device device) const;
};

// Selected rows of one layer (LRSA). For document b, its selectable partitions p = 0 ..
// n_b - 1 (n_b = max(0, floor((N_b - S) / L) - 1): those whose successor is complete) occupy
// rows part_offset[b] .. part_offset[b + 1] - 1 of `indices`.
// indices: i32 [Hk, num_parts, K], absolute row numbers in the packed batch, ascending in each
// partition (spec: ties to the lower position, kept sorted by position).
struct LrsaSelection {
  Tensor indices;
  std::vector<int64_t> part_offset;  // [B + 1]
  int64_t num_parts() const { return part_offset.empty() ? 0 : part_offset.back(); }
};

// Number of selectable partitions of a document of n tokens.
int64_t selectable_partitions(int64_t n, const LrsaParams& p);

// LagKV selection (spec "Selection") from this layer's post-RoPE keys and values. For CUDA
// tensors it fills part_offset, allocates indices, then calls cuda::lrsa_select.
LrsaSelection lrsa_select(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params);

struct AttentionForward {
  Tensor out;             // [T, Hq, D]
  Tensor lse;             // [Hq, T] f32
  LrsaSelection selection;  // empty for dense
};

// out and lse are written into `result` (allocated when undefined, else reused). The public
// function validates, allocates out/lse and (Mode::Lrsa) fills result.selection with
// lrsa_select before dispatching, so cuda::attention_forward receives all three ready.
void attention_forward(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                       const SeqLayout& layout, AttentionForward& result);

// dq [T, Hq, D], dk and dv [T, Hk, D] are overwritten (same layout rules as q/k/v; allocated
// when undefined). Deterministic on the CPU: every gradient row is summed in a fixed order.
// cuDNN with packed documents or LRSA needs dq with q's row stride and refuses other calls
// (kernels/attn_cudnn.h): a contiguous q with an undefined dq, or views of fused buffers for both.
void attention_backward(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const SeqLayout& layout, const AttentionForward& saved, const Tensor& dout, Tensor& dq,
                        Tensor& dk, Tensor& dv);

// Naive reference: explicit visibility per (query, key) pair evaluated on the fly, fp64
// arithmetic, one score row at a time. Returns out (and lse) in f64 on the CPU. For tests and
// debugging only.
struct ReferenceResult {
  std::vector<double> out;  // [T, Hq, D]
  std::vector<double> lse;  // [Hq, T]
  std::vector<double> dq, dk, dv;  // filled when dout was given
};
// Exact: every intermediate in fp64 (the ground truth). Bf16: rounds to bf16 what a
// straightforward bf16 implementation stores (scores, probabilities, out, dP, dS and the
// gradients), the baseline of the FlashAttention tolerance rule. The selection is the same.
enum class ReferenceRounding { Exact, Bf16 };
ReferenceResult attention_reference(const AttentionConfig& config, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const SeqLayout& layout, const Tensor* dout = nullptr,
                                    ReferenceRounding rounding = ReferenceRounding::Exact);

// The spec's selection computed independently in fp64 with a full sort (the reference of
// attention_reference): absolute rows [Hk, num_parts, K], same order as LrsaSelection::indices.
std::vector<int64_t> lrsa_select_reference(const Tensor& k, const Tensor& v, const SeqLayout& layout,
                                           const LrsaParams& params);

// The spec's visibility rule for one document: may a query at position t see key j (positions
// relative to the document start)? `selected(j)` tells whether j is in Sel(part(j)).
template <typename IsSelected>
bool lrsa_visible(int64_t t, int64_t j, const LrsaParams& p, IsSelected&& selected) {
  if (j > t) return false;
  if (j < p.sink || t < p.sink) return true;
  const int64_t pt = (t - p.sink) / p.lag, pj = (j - p.sink) / p.lag;
  if (pj >= pt - 1) return true;
  return selected(j);
}

}  // namespace lrsa::attn
