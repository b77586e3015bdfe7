// LRSA parameters and packed-batch document layout (docs/lrsa-spec.md, "Parameters" and
// "Partitions").
#include <algorithm>
#include <cmath>

#include "lrsa/attn/attention.h"

namespace lrsa::attn {

int64_t LrsaParams::kept() const {
  // r usually comes from decimal text and r * L is then not exact in binary (0.29 * 100 =
  // 28.999999999999996): a tolerance far below 1 / L keeps the floor the user meant.
  return int64_t(std::floor(ratio * double(lag) + 1e-9));
}

void LrsaParams::validate() const {
  LRSA_CHECK(sink >= 0, "attention.sink: must be >= 0, got {}", sink);
  LRSA_CHECK(lag >= 1, "attention.lag: must be >= 1, got {}", lag);
  LRSA_CHECK(ratio > 0.0 && ratio <= 1.0, "attention.ratio: must be in (0, 1], got {}", ratio);
  LRSA_CHECK(std::isfinite(score_v_ratio), "attention.score_v_ratio: must be finite, got {}", score_v_ratio);
  LRSA_CHECK(kept() >= 1,
             "attention.ratio: ratio * lag = {} * {} gives K = {} kept tokens per partition; K must be >= 1 "
             "(raise ratio or lag)",
             ratio, lag, kept());
}

int64_t selectable_partitions(int64_t n, const LrsaParams& p) {
  // Partition p is selectable when p + 1 is complete: S + (p + 2) L <= n.
  if (n < p.sink + 2 * p.lag) return 0;
  return (n - p.sink) / p.lag - 1;
}

int64_t SeqLayout::max_seqlen() const {
  int64_t longest = 0;
  for (size_t b = 1; b < cu_seqlens.size(); ++b) longest = std::max(longest, cu_seqlens[b] - cu_seqlens[b - 1]);
  return longest;
}

SeqLayout SeqLayout::single(int64_t tokens, Device device) { return from_lengths({tokens}, device); }

SeqLayout SeqLayout::from_lengths(const std::vector<int64_t>& lengths, Device device) {
  LRSA_CHECK(!lengths.empty(), "SeqLayout::from_lengths: no documents");
  SeqLayout layout;
  layout.cu_seqlens.push_back(0);
  for (size_t b = 0; b < lengths.size(); ++b) {
    LRSA_CHECK(lengths[b] >= 1, "SeqLayout::from_lengths: document {} has length {}; lengths must be >= 1", b,
               lengths[b]);
    layout.cu_seqlens.push_back(layout.cu_seqlens.back() + lengths[b]);
  }
  if (device.is_cuda())
    layout.cu_seqlens_device =
        Tensor::from_ints(layout.cu_seqlens, {int64_t(layout.cu_seqlens.size())}, DType::I32, device);
  return layout;
}

void SeqLayout::validate(const char* op, int64_t tokens, Device device) const {
  LRSA_CHECK(cu_seqlens.size() >= 2, "{}: layout.cu_seqlens needs at least one document (B + 1 >= 2 entries), got {}",
             op, cu_seqlens.size());
  LRSA_CHECK(cu_seqlens.front() == 0, "{}: layout.cu_seqlens must start at 0, got {}", op, cu_seqlens.front());
  for (size_t b = 1; b < cu_seqlens.size(); ++b)
    LRSA_CHECK(cu_seqlens[b] > cu_seqlens[b - 1],
               "{}: layout.cu_seqlens must be strictly increasing, got cu_seqlens[{}] = {} after {} (empty document)",
               op, b, cu_seqlens[b], cu_seqlens[b - 1]);
  LRSA_CHECK(cu_seqlens.back() == tokens, "{}: layout.cu_seqlens ends at {} but the tensors hold {} tokens", op,
             cu_seqlens.back(), tokens);
  // Row numbers (selection indices, cu_seqlens on the GPU) are i32.
  LRSA_CHECK(tokens <= INT32_MAX, "{}: {} tokens exceed the i32 row numbers of the attention kernels", op, tokens);
  if (device.is_cuda()) {
    const int64_t entries = int64_t(cu_seqlens.size());
    LRSA_CHECK(cu_seqlens_device.defined() && cu_seqlens_device.device() == device &&
                   cu_seqlens_device.dtype() == DType::I32 && cu_seqlens_device.shape() == Shape{entries} &&
                   cu_seqlens_device.is_contiguous(),
               "{}: layout.cu_seqlens_device must be a contiguous i32[{}] on {}, got {} (build the layout with "
               "SeqLayout::from_lengths(lengths, device))",
               op, entries, device.str(), cu_seqlens_device.defined() ? cu_seqlens_device.describe() : "undefined");
  }
}

}  // namespace lrsa::attn
