// Naive fp64 reference of dense and LRSA attention (docs/lrsa-spec.md), for tests: the visibility
// of every (query, key) pair is evaluated on the fly with lrsa_visible, one score row at a time,
// and the selection is recomputed here independently of the CPU/CUDA kernels.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attn/internal.h"

namespace lrsa::attn {
namespace {

// Spec steps 2-5 for one of K or V: softmax over the L rows of the partition starting at row
// `first` of the row-wise standard deviations, normalized by the ranges of the next L rows.
// x: [T, H, D] values in fp64, head h.
std::vector<double> reference_partition_scores(const std::vector<double>& x, int64_t H, int64_t D, int64_t h,
                                               int64_t first, int64_t L) {
  auto at = [&](int64_t row, int64_t c) { return x[size_t((row * H + h) * D + c)]; };
  std::vector<double> mn(static_cast<size_t>(D)), mx(static_cast<size_t>(D));
  for (int64_t c = 0; c < D; ++c) {
    mn[size_t(c)] = mx[size_t(c)] = at(first + L, c);
    for (int64_t i = first + L; i < first + 2 * L; ++i) {
      mn[size_t(c)] = std::min(mn[size_t(c)], at(i, c));
      mx[size_t(c)] = std::max(mx[size_t(c)], at(i, c));
    }
  }
  std::vector<double> s(static_cast<size_t>(L)), z(static_cast<size_t>(D));
  for (int64_t j = 0; j < L; ++j) {
    for (int64_t c = 0; c < D; ++c)
      z[size_t(c)] = (at(first + j, c) - mn[size_t(c)]) / std::max(mx[size_t(c)] - mn[size_t(c)], 1e-6);
    const double mean = std::accumulate(z.begin(), z.end(), 0.0) / double(D);
    double var = 0;
    for (double zc : z) var += (zc - mean) * (zc - mean);
    s[size_t(j)] = std::sqrt(var / double(D - 1));
  }
  const double top = *std::max_element(s.begin(), s.end());
  double total = 0;
  for (double sj : s) total += std::exp(sj - top);
  for (double& sj : s) sj = std::exp(sj - top) / total;
  return s;
}

}  // namespace

std::vector<int64_t> lrsa_select_reference(const Tensor& k, const Tensor& v, const SeqLayout& layout,
                                           const LrsaParams& params) {
  params.validate();
  const detail::AttnDims dims = detail::check_qkv("lrsa_select_reference", Tensor(), k, v, layout);
  LRSA_CHECK(dims.D >= 2, "lrsa_select_reference: head dimension {} < 2", dims.D);
  const std::vector<double> kd = k.to_doubles(), vd = v.to_doubles();
  const std::vector<int64_t> offsets = detail::selection_part_offsets(layout, params);
  const int64_t P = offsets.back(), K = params.kept(), L = params.lag;
  std::vector<int64_t> indices(size_t(dims.Hk * P * K));
  for (size_t b = 0; b + 1 < layout.cu_seqlens.size(); ++b) {
    for (int64_t p = offsets[b]; p < offsets[b + 1]; ++p) {
      const int64_t first = layout.cu_seqlens[b] + params.sink + (p - offsets[b]) * L;
      for (int64_t h = 0; h < dims.Hk; ++h) {
        const std::vector<double> sk = reference_partition_scores(kd, dims.Hk, dims.D, h, first, L);
        const std::vector<double> sv = reference_partition_scores(vd, dims.Hk, dims.D, h, first, L);
        std::vector<double> score(static_cast<size_t>(L));
        for (int64_t j = 0; j < L; ++j) score[size_t(j)] = sk[size_t(j)] + double(params.score_v_ratio) * sv[size_t(j)];
        // Positions start ascending; a stable sort by decreasing score keeps ties in position order.
        std::vector<int64_t> order(static_cast<size_t>(L));
        std::iota(order.begin(), order.end(), int64_t(0));
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t c) { return score[size_t(a)] > score[size_t(c)]; });
        std::sort(order.begin(), order.begin() + K);
        for (int64_t i = 0; i < K; ++i) indices[size_t((h * P + p) * K + i)] = first + order[size_t(i)];
      }
    }
  }
  return indices;
}

ReferenceResult attention_reference(const AttentionConfig& config, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const SeqLayout& layout, const Tensor* dout,
                                    ReferenceRounding rounding) {
  const char* op = "attention_reference";
  LRSA_CHECK(q.defined(), "{}: q is undefined", op);
  const detail::AttnDims dims = detail::check_qkv(op, q, k, v, layout);
  if (dout != nullptr) detail::check_heads(*dout, op, "dout", dims.T, dims.Hq, dims.D, dims.dtype, dims.device);
  const int64_t T = dims.T, Hq = dims.Hq, Hk = dims.Hk, D = dims.D, G = Hq / Hk;

  // is_selected[h * T + row]: row is in Sel(part(row)) for KV head h.
  std::vector<char> is_selected(size_t(Hk * T), 0);
  if (config.mode == Mode::Lrsa) {
    const std::vector<int64_t> indices = lrsa_select_reference(k, v, layout, config.lrsa);
    const int64_t per_head = int64_t(indices.size()) / Hk;
    for (int64_t h = 0; h < Hk; ++h)
      for (int64_t i = 0; i < per_head; ++i) is_selected[size_t(h * T + indices[size_t(h * per_head + i)])] = 1;
  }
  auto rnd = [&](double x) { return rounding == ReferenceRounding::Bf16 ? double(round_bf16(float(x))) : x; };

  const std::vector<double> qd = q.to_doubles(), kd = k.to_doubles(), vd = v.to_doubles();
  const std::vector<double> dod = dout != nullptr ? dout->to_doubles() : std::vector<double>{};
  const double scale = 1.0 / std::sqrt(double(D));
  ReferenceResult r;
  r.out.assign(size_t(T * Hq * D), 0.0);
  r.lse.assign(size_t(Hq * T), 0.0);
  if (dout != nullptr) {
    r.dq.assign(size_t(T * Hq * D), 0.0);
    r.dk.assign(size_t(T * Hk * D), 0.0);
    r.dv.assign(size_t(T * Hk * D), 0.0);
  }
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> score(size_t(layout.max_seqlen())), dscore(size_t(layout.max_seqlen()));

  for (size_t b = 0; b + 1 < layout.cu_seqlens.size(); ++b) {
    const int64_t s0 = layout.cu_seqlens[b], n = layout.cu_seqlens[b + 1] - s0;
    for (int64_t hq = 0; hq < Hq; ++hq) {
      const int64_t h = hq / G;
      auto selected = [&](int64_t j) { return is_selected[size_t(h * T + s0 + j)] != 0; };
      auto qrow = [&](int64_t t) { return &qd[size_t(((s0 + t) * Hq + hq) * D)]; };
      auto krow = [&](int64_t j) { return &kd[size_t(((s0 + j) * Hk + h) * D)]; };
      auto vrow = [&](int64_t j) { return &vd[size_t(((s0 + j) * Hk + h) * D)]; };
      for (int64_t t = 0; t < n; ++t) {
        // One row of scores over the whole document; invisible keys are -inf.
        double top = neg_inf;
        for (int64_t j = 0; j < n; ++j) {
          const bool visible = config.mode == Mode::Dense ? j <= t : lrsa_visible(t, j, config.lrsa, selected);
          double s = neg_inf;
          if (visible) {
            s = 0;
            for (int64_t d = 0; d < D; ++d) s += qrow(t)[d] * krow(j)[d];
            s = rnd(s * scale);
          }
          score[size_t(j)] = s;
          top = std::max(top, s);
        }
        double total = 0;
        for (int64_t j = 0; j < n; ++j) total += std::exp(score[size_t(j)] - top);
        r.lse[size_t(hq * T + s0 + t)] = top + std::log(total);
        for (int64_t j = 0; j < n; ++j) score[size_t(j)] = rnd(std::exp(score[size_t(j)] - top) / total);  // P
        double* out = &r.out[size_t(((s0 + t) * Hq + hq) * D)];
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += score[size_t(j)] * vrow(j)[d];
          out[d] = rnd(acc);
        }
        if (dout == nullptr) continue;

        // dP_j = dout . v_j; dS_j = P_j (dP_j - sum_i P_i dP_i); scores = scale * q . k.
        const double* go = &dod[size_t(((s0 + t) * Hq + hq) * D)];
        double row_sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          double dp = 0;
          if (score[size_t(j)] != 0)
            for (int64_t d = 0; d < D; ++d) dp += go[d] * vrow(j)[d];
          dscore[size_t(j)] = rnd(dp);
          row_sum += score[size_t(j)] * dscore[size_t(j)];
        }
        for (int64_t j = 0; j < n; ++j) dscore[size_t(j)] = rnd(score[size_t(j)] * (dscore[size_t(j)] - row_sum));
        double* dq = &r.dq[size_t(((s0 + t) * Hq + hq) * D)];
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += dscore[size_t(j)] * krow(j)[d];
          dq[d] = rnd(scale * acc);
        }
        for (int64_t j = 0; j < n; ++j) {
          double* dk = &r.dk[size_t(((s0 + j) * Hk + h) * D)];
          double* dv = &r.dv[size_t(((s0 + j) * Hk + h) * D)];
          for (int64_t d = 0; d < D; ++d) {
            dk[d] += scale * dscore[size_t(j)] * qrow(t)[d];
            dv[d] += score[size_t(j)] * go[d];
          }
        }
      }
    }
  }
  // dk and dv are sums over queries: a bf16 implementation rounds them once, at the end.
  for (double& x : r.dk) x = rnd(x);
  for (double& x : r.dv) x = rnd(x);
  return r;
}

}  // namespace lrsa::attn
