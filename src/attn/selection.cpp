// LagKV selection (docs/lrsa-spec.md, "Selection"): for every selectable partition p of every
// document and every KV head, the K rows of p whose normalized keys and values vary most,
// normalized by the channel ranges of partition p + 1.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>

#include "attn/internal.h"
#include "lrsa/core/dispatch.h"
#ifdef LRSA_WITH_CUDA
#include "lrsa/attn/cuda_attn.h"
#endif

namespace lrsa::attn {
namespace detail {

std::vector<int64_t> selection_part_offsets(const SeqLayout& layout, const LrsaParams& params) {
  std::vector<int64_t> offsets{0};
  for (size_t b = 1; b < layout.cu_seqlens.size(); ++b)
    offsets.push_back(offsets.back() + selectable_partitions(layout.cu_seqlens[b] - layout.cu_seqlens[b - 1], params));
  return offsets;
}

void check_selection(const char* op, const LrsaSelection& selection, const SeqLayout& layout,
                     const LrsaParams& params, int64_t Hk, Device device) {
  const std::vector<int64_t> expected = selection_part_offsets(layout, params);
  LRSA_CHECK(selection.part_offset == expected,
             "{}: the LRSA selection does not belong to this layout and these parameters (part_offset {}, expected "
             "{}); pass the selection attention_forward saved",
             op, selection.part_offset, expected);
  const int64_t K = params.kept(), P = expected.back();
  LRSA_CHECK(selection.indices.defined(), "{}: the LRSA selection has no indices", op);
  // (An empty selection is not checked for contiguity: Tensor::is_contiguous() is false for
  // shapes with a zero dimension.)
  check_tensor(selection.indices, op, "selection.indices", {DType::I32}, P > 0);
  check_shape(selection.indices, op, "selection.indices", {Hk, P, K});
  LRSA_CHECK(selection.indices.device() == device, "{}: selection.indices is on {}, the attention tensors on {}", op,
             selection.indices.device().str(), device.str());
  if (!device.is_cpu()) return;
  // The CPU kernels index rows with these numbers: each must lie in its own partition.
  const int32_t* rows = selection.indices.data_as<int32_t>();
  for (size_t b = 0; b + 1 < layout.cu_seqlens.size(); ++b) {
    for (int64_t p = expected[b]; p < expected[b + 1]; ++p) {
      const int64_t first = layout.cu_seqlens[b] + params.sink + (p - expected[b]) * params.lag;
      for (int64_t h = 0; h < Hk; ++h) {
        for (int64_t i = 0; i < K; ++i) {
          const int64_t row = rows[(h * P + p) * K + i];
          LRSA_CHECK(row >= first && row < first + params.lag && (i == 0 || row > rows[(h * P + p) * K + i - 1]),
                     "{}: selection.indices[{}, {}, {}] = {} is not an ascending row of partition [{}, {})", op, h, p,
                     i, row, first, first + params.lag);
        }
      }
    }
  }
}

namespace {

inline float load_f32(float x) { return x; }
inline float load_f32(bf16 x) { return bf16_to_float(x); }

// s[j] for the L rows of partition p starting at row `first` (spec steps 2-4): the channel
// ranges come from the L rows that follow. Elementwise work in fp32 as the spec reads the
// values; the sums over channels in fp64 so the result hardly depends on summation order.
template <typename T>
void lag_std(const T* x, int64_t row_stride, int64_t first, int64_t L, int64_t D, std::vector<float>& mn,
             std::vector<float>& range, std::vector<float>& z, std::vector<double>& s) {
  std::fill(mn.begin(), mn.end(), std::numeric_limits<float>::infinity());
  std::fill(range.begin(), range.end(), -std::numeric_limits<float>::infinity());  // holds max first
  for (int64_t i = first + L; i < first + 2 * L; ++i) {
    const T* row = x + i * row_stride;
    for (int64_t c = 0; c < D; ++c) {
      mn[size_t(c)] = std::min(mn[size_t(c)], load_f32(row[c]));
      range[size_t(c)] = std::max(range[size_t(c)], load_f32(row[c]));
    }
  }
  for (int64_t c = 0; c < D; ++c) range[size_t(c)] = std::max(range[size_t(c)] - mn[size_t(c)], 1e-6f);
  for (int64_t j = 0; j < L; ++j) {
    const T* row = x + (first + j) * row_stride;
    double sum = 0;
    for (int64_t c = 0; c < D; ++c) {
      z[size_t(c)] = (load_f32(row[c]) - mn[size_t(c)]) / range[size_t(c)];
      sum += z[size_t(c)];
    }
    const double mean = sum / double(D);
    double squares = 0;
    for (int64_t c = 0; c < D; ++c) squares += (z[size_t(c)] - mean) * (z[size_t(c)] - mean);
    s[size_t(j)] = std::sqrt(squares / double(D - 1));
  }
}

// Softmax over the L rows of the partition (spec step 5), in place. The total is a pairwise sum
// over the rows padded with zeros to a power of two (tree[i] += tree[i + h] for h = half of it ..
// 1): more accurate than a running sum, and an order the CUDA selection reproduces across its
// threads (kernels/attn_select.cu, tree_sums), so that both pick the same rows.
void softmax_rows(std::vector<double>& s, std::vector<double>& tree) {
  const double top = *std::max_element(s.begin(), s.end());
  for (double& x : s) x = std::exp(x - top);
  tree.assign(std::bit_ceil(s.size()), 0.0);
  std::copy(s.begin(), s.end(), tree.begin());
  for (size_t h = tree.size() / 2; h > 0; h /= 2)
    for (size_t i = 0; i < h; ++i) tree[i] += tree[i + h];
  const double total = tree[0];
  for (double& x : s) x /= total;
}

template <typename T>
void select_typed(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params,
                  LrsaSelection& selection) {
  const int64_t Hk = k.size(1), D = k.size(2), S = params.sink, L = params.lag, K = params.kept();
  const int64_t P = selection.num_parts();
  const double lambda = params.score_v_ratio;
  const T* kbase = k.data_as<T>();
  const T* vbase = v.data_as<T>();
  int32_t* out = selection.indices.data_as<int32_t>();
  // First absolute row of every packed partition.
  std::vector<int64_t> part_first(static_cast<size_t>(P));
  for (size_t b = 0; b + 1 < layout.cu_seqlens.size(); ++b)
    for (int64_t p = selection.part_offset[b]; p < selection.part_offset[b + 1]; ++p)
      part_first[size_t(p)] = layout.cu_seqlens[b] + S + (p - selection.part_offset[b]) * L;

#pragma omp parallel
  {
    std::vector<float> mn(static_cast<size_t>(D)), range(static_cast<size_t>(D)), z(static_cast<size_t>(D));
    std::vector<double> sk(static_cast<size_t>(L)), sv(static_cast<size_t>(L)), tree;
    std::vector<int64_t> order(static_cast<size_t>(L));
#pragma omp for schedule(static)
    for (int64_t job = 0; job < Hk * P; ++job) {
      const int64_t h = job / P, first = part_first[size_t(job % P)];
      lag_std(kbase + h * D, k.stride(0), first, L, D, mn, range, z, sk);
      lag_std(vbase + h * D, v.stride(0), first, L, D, mn, range, z, sv);
      softmax_rows(sk, tree);
      softmax_rows(sv, tree);
      for (int64_t j = 0; j < L; ++j) {
        sk[size_t(j)] += lambda * sv[size_t(j)];
        // A NaN score (NaN inputs) ranks last, so the ordering below stays well defined.
        if (std::isnan(sk[size_t(j)])) sk[size_t(j)] = -std::numeric_limits<double>::infinity();
      }
      const std::vector<double>& score = sk;
      std::iota(order.begin(), order.end(), int64_t(0));
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        return score[size_t(a)] > score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && a < b);
      });
      std::sort(order.begin(), order.begin() + K);
      for (int64_t i = 0; i < K; ++i) out[job * K + i] = int32_t(first + order[size_t(i)]);
    }
  }
}

}  // namespace

void lrsa_select_cpu(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params,
                     LrsaSelection& selection) {
  if (k.dtype() == DType::BF16) {
    select_typed<bf16>(k, v, layout, params, selection);
  } else {
    select_typed<float>(k, v, layout, params, selection);
  }
}

}  // namespace detail

namespace {

void select_into(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params,
                 LrsaSelection& selection) {
  params.validate();
  const detail::AttnDims dims = detail::check_qkv("lrsa_select", Tensor(), k, v, layout);
  LRSA_CHECK(dims.D >= 2, "lrsa_select: head dimension {} < 2; the per-row standard deviation divides by d - 1",
             dims.D);
  selection.part_offset = detail::selection_part_offsets(layout, params);
  selection.indices = Tensor::empty({dims.Hk, selection.num_parts(), params.kept()}, DType::I32, dims.device);
  if (selection.num_parts() == 0) return;
  LRSA_DISPATCH_CUDA(dims.device, "lrsa_select", cuda::lrsa_select(k, v, layout, params, selection));
  detail::lrsa_select_cpu(k, v, layout, params, selection);
}

}  // namespace

LrsaSelection lrsa_select(const Tensor& k, const Tensor& v, const SeqLayout& layout, const LrsaParams& params) {
  LrsaSelection selection;
  select_into(k, v, layout, params, selection);
  return selection;
}

}  // namespace lrsa::attn
