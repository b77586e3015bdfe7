// CPU attention, dense and LRSA (docs/lrsa-spec.md), FlashAttention-style: a tile of queries
// visits only the keys it may see, in blocks, with an online softmax and fp32 accumulation.
// For LRSA a query tile inside partition q visits
//   [sink | Sel(0) .. Sel(q - 2) | raw partitions q - 1 and q (causal)],
// so the cost falls with the kept ratio; dense mode is the same code with the whole document
// prefix as the key list. GQA is native: the query heads of a group share the gathered K/V
// blocks. Nothing of size T x T is ever stored.
//
// Backward recomputes probabilities from lse in two deterministic passes: dq per query tile
// (same key lists as forward), then dk/dv per range of key rows (the queries that see them),
// so every gradient row is summed by one thread in a fixed order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/internal.h"

namespace lrsa::attn::detail {
namespace {

constexpr int64_t kTileQ = 64;  // query rows per tile
constexpr int64_t kTileK = 64;  // key rows per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float load_f32(float x) { return x; }
inline float load_f32(bf16 x) { return bf16_to_float(x); }
inline void store_f32(float x, float& dst) { dst = x; }
inline void store_f32(float x, bf16& dst) { dst = float_to_bf16(x); }

// C[M, N] = (accumulate ? C : 0) + A[M, Kd] @ B[Kd, N], row-major with leading dimensions. The
// innermost loop runs along contiguous rows of B and C, so it vectorizes without reassociating.
void gemm_rows(int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    float* __restrict c = C + m * ldc;
    if (!accumulate) std::fill(c, c + N, 0.0f);
    for (int64_t kk = 0; kk < Kd; ++kk) {
      const float a = A[m * lda + kk];
      const float* __restrict b = B + kk * ldb;
      for (int64_t n = 0; n < N; ++n) c[n] += a * b[n];
    }
  }
}

// Same product; full 4 x 8 blocks of C stay in registers over the whole Kd loop (about 1.7x
// faster than gemm_rows at these tile sizes), the edges go through gemm_rows.
void gemm(int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
  constexpr int64_t MR = 4, NR = 8;
  const int64_t M_full = M / MR * MR, N_full = N / NR * NR;
  for (int64_t m0 = 0; m0 < M_full; m0 += MR) {
    for (int64_t n0 = 0; n0 < N_full; n0 += NR) {
      float acc[MR][NR] = {};
      if (accumulate)
        for (int64_t r = 0; r < MR; ++r)
          for (int64_t x = 0; x < NR; ++x) acc[r][x] = C[(m0 + r) * ldc + n0 + x];
      for (int64_t kk = 0; kk < Kd; ++kk) {
        const float* b = B + kk * ldb + n0;
        for (int64_t r = 0; r < MR; ++r) {
          const float a = A[(m0 + r) * lda + kk];
#pragma omp simd
          for (int64_t x = 0; x < NR; ++x) acc[r][x] += a * b[x];
        }
      }
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t x = 0; x < NR; ++x) C[(m0 + r) * ldc + n0 + x] = acc[r][x];
    }
    if (N_full < N)
      gemm_rows(MR, N - N_full, Kd, A + m0 * lda, lda, B + N_full, ldb, C + m0 * ldc + N_full, ldc, accumulate);
  }
  if (M_full < M) gemm_rows(M - M_full, N, Kd, A + M_full * lda, lda, B, ldb, C + M_full * ldc, ldc, accumulate);
}

// Query tile [qa, qb) of absolute rows inside document `doc`; it never crosses the sink or a
// partition boundary, so all its rows share one key list.
struct QueryTile {
  int64_t doc, qa, qb;
};

// Key rows [ka, kb) of document `doc`, seen causally by the queries [ka, qend). For LRSA,
// `part` >= 0 names the document partition these rows form: its selected rows are also seen by
// every query from partition part + 2 to the end of the document.
struct KeyRange {
  int64_t doc, ka, kb, qend, part;
};

template <typename T>
class CpuAttention {
 public:
  CpuAttention(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
               const SeqLayout& layout, const LrsaSelection& selection)
      : lrsa_(config.mode == Mode::Lrsa),
        params_(config.lrsa),
        layout_(layout),
        tokens_(q.size(0)),
        Hq_(q.size(1)),
        Hk_(k.size(1)),
        D_(q.size(2)),
        G_(Hq_ / Hk_),
        scale_(float(1.0 / std::sqrt(double(D_)))),
        q_(q),
        k_(k),
        v_(v) {
    if (lrsa_) {
      sel_ = selection.indices.data_as<int32_t>();
      part_offset_ = selection.part_offset;
      K_ = params_.kept();
    }
  }

  void forward(Tensor& out, Tensor& lse) const {
    const std::vector<QueryTile> tiles = query_tiles();
    const Rows o(out);
    float* lse_data = lse.data_as<float>();
    parallel_over_heads(int64_t(tiles.size()),
                        [&](int64_t i, int64_t h) { forward_tile(tiles[size_t(i)], h, o, lse_data); });
  }

  void backward(const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv) const {
    // delta[hq, t] = dout . out, the row term of the softmax gradient.
    std::vector<float> delta(size_t(Hq_ * tokens_));
    const Rows o(out), go(dout);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens_; ++t) {
      for (int64_t hq = 0; hq < Hq_; ++hq) {
        float acc = 0;
        for (int64_t d = 0; d < D_; ++d) acc += load_f32(go.at(t, hq)[d]) * load_f32(o.at(t, hq)[d]);
        delta[size_t(hq * tokens_ + t)] = acc;
      }
    }
    const Grad grad{go, lse.data_as<float>(), delta.data()};
    const std::vector<QueryTile> tiles = query_tiles();
    const Rows dq_rows(dq);
    parallel_over_heads(int64_t(tiles.size()),
                        [&](int64_t i, int64_t h) { dq_tile(tiles[size_t(i)], h, grad, dq_rows); });
    const std::vector<KeyRange> ranges = key_ranges();
    const Rows dk_rows(dk), dv_rows(dv);
    parallel_over_heads(int64_t(ranges.size()),
                        [&](int64_t i, int64_t h) { dkv_range(ranges[size_t(i)], h, grad, dk_rows, dv_rows); });
  }

 private:
  // Rows of a [T, H, D] tensor whose last two dimensions are contiguous.
  struct Rows {
    T* base;
    int64_t stride, D;
    explicit Rows(const Tensor& t) : base(t.data_as<T>()), stride(t.stride(0)), D(t.size(2)) {}
    T* at(int64_t row, int64_t head) const { return base + row * stride + head * D; }
  };
  // What both backward passes read besides q/k/v.
  struct Grad {
    Rows dout;
    const float* lse;    // [Hq, T]
    const float* delta;  // [Hq, T]
  };

  // Work items times KV heads over OpenMP; dynamic, as items differ in cost.
  template <typename Fn>
  void parallel_over_heads(int64_t items, Fn&& fn) const {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t job = 0; job < items * Hk_; ++job) fn(job / Hk_, job % Hk_);
  }

  // dst[i, :] = mult * x[rows[i], head, :] in fp32: [n, D].
  void load(const Rows& x, int64_t head, const int32_t* rows, int64_t n, float* dst, float mult = 1.0f) const {
    for (int64_t i = 0; i < n; ++i) {
      const T* src = x.at(rows[i], head);
      for (int64_t d = 0; d < D_; ++d) dst[i * D_ + d] = mult * load_f32(src[d]);
    }
  }
  // dst[:, i] = mult * x[rows[i], head, :]: [D, ld], so products can run along the rows.
  void load_t(const Rows& x, int64_t head, const int32_t* rows, int64_t n, float* dst, int64_t ld,
              float mult = 1.0f) const {
    for (int64_t i = 0; i < n; ++i) {
      const T* src = x.at(rows[i], head);
      for (int64_t d = 0; d < D_; ++d) dst[d * ld + i] = mult * load_f32(src[d]);
    }
  }

  std::vector<int32_t> row_range(int64_t a, int64_t b) const {
    std::vector<int32_t> rows(size_t(b - a));
    for (int64_t i = a; i < b; ++i) rows[size_t(i - a)] = int32_t(i);
    return rows;
  }

  int64_t doc_start(int64_t doc) const { return layout_.cu_seqlens[size_t(doc)]; }
  int64_t doc_end(int64_t doc) const { return layout_.cu_seqlens[size_t(doc) + 1]; }

  // Sel(p) of document `doc` for KV head h: K ascending absolute rows; partitions 0 .. p are
  // consecutive, so Sel(0) .. Sel(q - 2) is one run of (q - 1) K rows.
  const int32_t* selected(int64_t doc, int64_t h, int64_t p) const {
    return sel_ + (h * part_offset_.back() + part_offset_[size_t(doc)] + p) * K_;
  }

  std::vector<QueryTile> query_tiles() const {
    std::vector<QueryTile> tiles;
    for (int64_t b = 0; b + 1 < int64_t(layout_.cu_seqlens.size()); ++b) {
      const int64_t s0 = doc_start(b), s1 = doc_end(b);
      for (int64_t qa = s0; qa < s1;) {
        int64_t segment_end = s1;  // dense: one segment
        if (lrsa_) {  // LRSA tiles stop at the end of the sink and of every partition
          const int64_t t = qa - s0, S = params_.sink, L = params_.lag;
          segment_end = std::min(s1, s0 + (t < S ? S : S + ((t - S) / L + 1) * L));
        }
        const int64_t qb = std::min(segment_end, qa + kTileQ);
        tiles.push_back({b, qa, qb});
        qa = qb;
      }
    }
    return tiles;
  }

  // Keys a query tile may see, ascending absolute rows, before the causal cut at each query.
  void tile_keys(const QueryTile& tile, int64_t h, std::vector<int32_t>& keys) const {
    keys.clear();
    const int64_t s0 = doc_start(tile.doc), t = tile.qa - s0;
    int64_t raw_from = s0;  // dense and queries before S + 2L: the whole prefix
    if (lrsa_ && t >= params_.sink) {
      const int64_t part = (t - params_.sink) / params_.lag;
      if (part >= 2) {
        for (int64_t j = s0; j < s0 + params_.sink; ++j) keys.push_back(int32_t(j));
        const int32_t* sel = selected(tile.doc, h, 0);
        keys.insert(keys.end(), sel, sel + (part - 1) * K_);
        raw_from = s0 + params_.sink + (part - 1) * params_.lag;
      }
    }
    for (int64_t j = raw_from; j < tile.qb; ++j) keys.push_back(int32_t(j));
  }

  std::vector<KeyRange> key_ranges() const {
    std::vector<KeyRange> ranges;
    for (int64_t b = 0; b + 1 < int64_t(layout_.cu_seqlens.size()); ++b) {
      const int64_t s0 = doc_start(b), s1 = doc_end(b);
      // Dense keys, and LRSA sink keys, are seen by every later query of the document.
      const int64_t prefix_end = lrsa_ ? std::min(s1, s0 + params_.sink) : s1;
      for (int64_t ka = s0; ka < prefix_end; ka += kTileK)
        ranges.push_back({b, ka, std::min(prefix_end, ka + kTileK), s1, -1});
      if (!lrsa_) continue;
      // Partition p is seen raw by partitions p and p + 1; its selection by the later ones.
      for (int64_t ka = prefix_end, p = 0; ka < s1; ka += params_.lag, ++p)
        ranges.push_back({b, ka, std::min(s1, ka + params_.lag), std::min(s1, ka + 2 * params_.lag), p});
    }
    return ranges;
  }

  void forward_tile(const QueryTile& tile, int64_t h, const Rows& out, float* lse) const {
    const int64_t nq = tile.qb - tile.qa;
    std::vector<int32_t> keys;
    tile_keys(tile, h, keys);
    const std::vector<int32_t> qrows = row_range(tile.qa, tile.qb);
    // Per query head of the group: q pre-scaled by 1/sqrt(D), running max m, sum l, output o.
    std::vector<float> q(size_t(G_ * nq * D_)), o(size_t(G_ * nq * D_), 0.0f);
    std::vector<float> m(size_t(G_ * nq), kNegInf), l(size_t(G_ * nq), 0.0f);
    std::vector<float> kt(size_t(D_ * kTileK)), vb(size_t(kTileK * D_)), s(size_t(nq * kTileK));
    for (int64_t g = 0; g < G_; ++g) load(q_, h * G_ + g, qrows.data(), nq, &q[size_t(g * nq * D_)], scale_);

    for (int64_t kb = 0; kb < int64_t(keys.size()); kb += kTileK) {
      const int64_t nk = std::min(kTileK, int64_t(keys.size()) - kb);
      const int32_t* krows = &keys[size_t(kb)];
      load_t(k_, h, krows, nk, kt.data(), kTileK);
      load(v_, h, krows, nk, vb.data());
      const bool causal = krows[nk - 1] > tile.qa;  // some key of the block follows some query
      for (int64_t g = 0; g < G_; ++g) {
        float* og = &o[size_t(g * nq * D_)];
        gemm(nq, nk, D_, &q[size_t(g * nq * D_)], D_, kt.data(), kTileK, s.data(), kTileK, false);
        for (int64_t i = 0; i < nq; ++i) {
          float* si = &s[size_t(i * kTileK)];
          if (causal)
            for (int64_t j = 0; j < nk; ++j)
              if (krows[j] > tile.qa + i) si[j] = kNegInf;
          float& mi = m[size_t(g * nq + i)];
          const float top = std::max(mi, *std::max_element(si, si + nk));
          if (top == kNegInf) {  // no key of this block is visible to this row yet
            std::fill(si, si + nk, 0.0f);
            continue;
          }
          const float rescale = std::exp(mi - top);
          float sum = 0;
          for (int64_t j = 0; j < nk; ++j) sum += (si[j] = std::exp(si[j] - top));
          l[size_t(g * nq + i)] = l[size_t(g * nq + i)] * rescale + sum;
          for (int64_t d = 0; d < D_; ++d) og[i * D_ + d] *= rescale;
          mi = top;
        }
        gemm(nq, D_, nk, s.data(), kTileK, vb.data(), D_, og, D_, true);
      }
    }
    for (int64_t g = 0; g < G_; ++g) {
      const int64_t hq = h * G_ + g;
      for (int64_t i = 0; i < nq; ++i) {
        // Every query sees at least itself, so l > 0.
        const float li = l[size_t(g * nq + i)], inv = 1.0f / li;
        T* dst = out.at(tile.qa + i, hq);
        for (int64_t d = 0; d < D_; ++d) store_f32(o[size_t((g * nq + i) * D_ + d)] * inv, dst[d]);
        lse[hq * tokens_ + tile.qa + i] = m[size_t(g * nq + i)] + std::log(li);
      }
    }
  }

  // P and dS of one (query rows x key rows) block, from the recomputed scores s (q pre-scaled)
  // and dP: p = exp(s - lse) where key <= query else 0, ds = p (dP - delta). `transposed`:
  // blocks are [keys, queries] instead of [queries, keys].
  static void softmax_grad(int64_t nq, int64_t nk, int64_t ld, bool transposed, const int32_t* qrows,
                           const int32_t* krows, const float* lse, const float* delta, float* s_to_p,
                           float* dp_to_ds) {
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t at = transposed ? j * ld + i : i * ld + j;
        const float p = krows[j] > qrows[i] ? 0.0f : std::exp(s_to_p[at] - lse[i]);
        s_to_p[at] = p;
        dp_to_ds[at] = p * (dp_to_ds[at] - delta[i]);
      }
    }
  }

  // dq for one query tile: dq = scale * sum_j dS_j k_j over the tile's key list.
  void dq_tile(const QueryTile& tile, int64_t h, const Grad& grad, const Rows& dq) const {
    const int64_t nq = tile.qb - tile.qa;
    std::vector<int32_t> keys;
    tile_keys(tile, h, keys);
    const std::vector<int32_t> qrows = row_range(tile.qa, tile.qb);
    std::vector<float> q(size_t(G_ * nq * D_)), go(size_t(G_ * nq * D_)), acc(size_t(G_ * nq * D_), 0.0f);
    std::vector<float> kb_rows(size_t(kTileK * D_)), kt(size_t(D_ * kTileK)), vt(size_t(D_ * kTileK));
    std::vector<float> s(size_t(nq * kTileK)), dp(size_t(nq * kTileK));
    for (int64_t g = 0; g < G_; ++g) {
      load(q_, h * G_ + g, qrows.data(), nq, &q[size_t(g * nq * D_)], scale_);
      load(grad.dout, h * G_ + g, qrows.data(), nq, &go[size_t(g * nq * D_)]);
    }
    for (int64_t kb = 0; kb < int64_t(keys.size()); kb += kTileK) {
      const int64_t nk = std::min(kTileK, int64_t(keys.size()) - kb);
      const int32_t* krows = &keys[size_t(kb)];
      load(k_, h, krows, nk, kb_rows.data());
      load_t(k_, h, krows, nk, kt.data(), kTileK);
      load_t(v_, h, krows, nk, vt.data(), kTileK);
      for (int64_t g = 0; g < G_; ++g) {
        const int64_t hq = h * G_ + g;
        gemm(nq, nk, D_, &q[size_t(g * nq * D_)], D_, kt.data(), kTileK, s.data(), kTileK, false);
        gemm(nq, nk, D_, &go[size_t(g * nq * D_)], D_, vt.data(), kTileK, dp.data(), kTileK, false);
        softmax_grad(nq, nk, kTileK, false, qrows.data(), krows, grad.lse + hq * tokens_ + tile.qa,
                     grad.delta + hq * tokens_ + tile.qa, s.data(), dp.data());
        gemm(nq, D_, nk, dp.data(), kTileK, kb_rows.data(), D_, &acc[size_t(g * nq * D_)], D_, true);
      }
    }
    for (int64_t g = 0; g < G_; ++g)
      for (int64_t i = 0; i < nq; ++i) {
        T* dst = dq.at(tile.qa + i, h * G_ + g);
        for (int64_t d = 0; d < D_; ++d) store_f32(scale_ * acc[size_t((g * nq + i) * D_ + d)], dst[d]);
      }
  }

  // dk (for q pre-scaled: dS^T q_scaled) and dv (P^T dout) of nk key rows from the queries
  // [qa, qb) of every head of the group, accumulated into dk/dv [nk, D].
  void dkv_block(const int32_t* krows, int64_t nk, int64_t qa, int64_t qb, int64_t h, const Grad& grad, float* dk,
                 float* dv) const {
    std::vector<float> kb_rows(size_t(nk * D_)), vb(size_t(nk * D_));
    std::vector<float> q(size_t(kTileQ * D_)), qt(size_t(D_ * kTileQ)), go(size_t(kTileQ * D_)),
        got(size_t(D_ * kTileQ));
    std::vector<float> st(size_t(nk * kTileQ)), dpt(size_t(nk * kTileQ));
    load(k_, h, krows, nk, kb_rows.data());
    load(v_, h, krows, nk, vb.data());
    for (int64_t q0 = qa; q0 < qb; q0 += kTileQ) {
      const int64_t nq = std::min(kTileQ, qb - q0);
      const std::vector<int32_t> qrows = row_range(q0, q0 + nq);
      for (int64_t g = 0; g < G_; ++g) {
        const int64_t hq = h * G_ + g;
        load(q_, hq, qrows.data(), nq, q.data(), scale_);
        load_t(q_, hq, qrows.data(), nq, qt.data(), kTileQ, scale_);
        load(grad.dout, hq, qrows.data(), nq, go.data());
        load_t(grad.dout, hq, qrows.data(), nq, got.data(), kTileQ);
        gemm(nk, nq, D_, kb_rows.data(), D_, qt.data(), kTileQ, st.data(), kTileQ, false);
        gemm(nk, nq, D_, vb.data(), D_, got.data(), kTileQ, dpt.data(), kTileQ, false);
        softmax_grad(nq, nk, kTileQ, true, qrows.data(), krows, grad.lse + hq * tokens_ + q0,
                     grad.delta + hq * tokens_ + q0, st.data(), dpt.data());
        gemm(nk, D_, nq, st.data(), kTileQ, go.data(), D_, dv, D_, true);
        gemm(nk, D_, nq, dpt.data(), kTileQ, q.data(), D_, dk, D_, true);
      }
    }
  }

  void dkv_range(const KeyRange& range, int64_t h, const Grad& grad, const Rows& dk, const Rows& dv) const {
    const int64_t n = range.kb - range.ka;
    std::vector<float> dk_acc(size_t(n * D_), 0.0f), dv_acc(size_t(n * D_), 0.0f);
    const std::vector<int32_t> rows = row_range(range.ka, range.kb);
    for (int64_t k0 = 0; k0 < n; k0 += kTileK)
      dkv_block(&rows[size_t(k0)], std::min(kTileK, n - k0), range.ka + k0, range.qend, h, grad,
                &dk_acc[size_t(k0 * D_)], &dv_acc[size_t(k0 * D_)]);
    const int64_t doc = range.doc;
    const int64_t num_selectable = lrsa_ ? part_offset_[size_t(doc) + 1] - part_offset_[size_t(doc)] : 0;
    if (range.part >= 0 && range.part < num_selectable && range.qend < doc_end(doc)) {
      // The selected rows are also seen by every query from partition part + 2 on; their
      // gradients join the raw-window ones above, in this same thread.
      const int32_t* sel = selected(doc, h, range.part);
      std::vector<float> dk_sel(size_t(kTileK * D_)), dv_sel(size_t(kTileK * D_));
      for (int64_t i0 = 0; i0 < K_; i0 += kTileK) {
        const int64_t nk = std::min(kTileK, K_ - i0);
        std::fill(dk_sel.begin(), dk_sel.end(), 0.0f);
        std::fill(dv_sel.begin(), dv_sel.end(), 0.0f);
        dkv_block(sel + i0, nk, range.qend, doc_end(doc), h, grad, dk_sel.data(), dv_sel.data());
        for (int64_t i = 0; i < nk; ++i)
          for (int64_t d = 0; d < D_; ++d) {
            dk_acc[size_t((sel[i0 + i] - range.ka) * D_ + d)] += dk_sel[size_t(i * D_ + d)];
            dv_acc[size_t((sel[i0 + i] - range.ka) * D_ + d)] += dv_sel[size_t(i * D_ + d)];
          }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      T* dk_dst = dk.at(range.ka + i, h);
      T* dv_dst = dv.at(range.ka + i, h);
      for (int64_t d = 0; d < D_; ++d) {
        store_f32(dk_acc[size_t(i * D_ + d)], dk_dst[d]);
        store_f32(dv_acc[size_t(i * D_ + d)], dv_dst[d]);
      }
    }
  }

  bool lrsa_;
  LrsaParams params_;
  const SeqLayout& layout_;
  int64_t tokens_, Hq_, Hk_, D_, G_;
  float scale_;
  Rows q_, k_, v_;
  const int32_t* sel_ = nullptr;
  std::vector<int64_t> part_offset_;
  int64_t K_ = 0;
};

}  // namespace

void attention_forward_cpu(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                           const SeqLayout& layout, AttentionForward& result) {
  if (q.dtype() == DType::BF16) {
    CpuAttention<bf16>(config, q, k, v, layout, result.selection).forward(result.out, result.lse);
  } else {
    CpuAttention<float>(config, q, k, v, layout, result.selection).forward(result.out, result.lse);
  }
}

void attention_backward_cpu(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                            const SeqLayout& layout, const AttentionForward& saved, const Tensor& dout, Tensor& dq,
                            Tensor& dk, Tensor& dv) {
  if (q.dtype() == DType::BF16) {
    CpuAttention<bf16>(config, q, k, v, layout, saved.selection).backward(saved.out, saved.lse, dout, dq, dk, dv);
  } else {
    CpuAttention<float>(config, q, k, v, layout, saved.selection).backward(saved.out, saved.lse, dout, dq, dk, dv);
  }
}

}  // namespace lrsa::attn::detail
