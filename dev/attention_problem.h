// dev/attention_problem.h: the attention problems the Hopper dev harnesses check and time: random
// bf16 Q/K/V of packed documents, dense causal or LRSA with a random selection, and the reference in
// double.
#pragma once
#include "../kernels/attn_wgmma.cuh"
#include "hopper.cuh"

#include <algorithm>

using namespace lrsa::cuda::wgmma;

// A packed batch of documents, T tokens in all; lag 0 is dense causal attention. Positions,
// partitions, selection and visibility restart at every document, and no key is seen across
// documents. For LRSA the selection is random (any sorted K rows per partition: the kernels do not
// care how they were chosen) and the compacted K/V hold, per KV head and document,
// [sink | Sel(0) | Sel(1) | ...], the documents one after the other, as the kernels expect.
struct Problem {
  int T = 0, Hq = 0, Hk = 0, sink = 0, lag = 0, keep = 0, D = 64;  // D: the head dim
  std::vector<int> doc_start;        // [B + 1]: document b is rows [doc_start[b], doc_start[b + 1])
  std::vector<int> compacted_start;  // [B + 1]: its compacted rows in ck/cv (LRSA)
  std::vector<int> doc_of;           // [T]
  std::vector<__nv_bfloat16> q, k, v, ck, cv;
  std::vector<std::vector<int>> compacted_row;       // [Hk][T]: the position's row in ck/cv, or -1
  std::vector<std::vector<int>> compacted_position;  // [Hk][compacted rows]: the inverse
  int documents() const { return int(doc_start.size()) - 1; }
  int length(int doc) const { return doc_start[doc + 1] - doc_start[doc]; }
  int compacted_rows() const { return compacted_start.back(); }
  Lrsa lrsa() const { return Lrsa(sink, lag, keep); }
  int partition(int t) const { return (t - sink) / lag; }  // t relative to its document
  bool visible(int kv_head, int i, int j) const {  // rows i, j; ../shared/lrsa-spec.md, "Visibility"
    if (j > i || doc_of[i] != doc_of[j]) return false;
    const int t = i - doc_start[doc_of[i]], key = j - doc_start[doc_of[j]];
    if (lag == 0 || key < sink) return true;
    if (t < sink) return false;
    return partition(key) >= partition(t) - 1 || compacted_row[kv_head][j] >= 0;
  }
};

inline float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

inline Problem make_problem(const std::vector<int>& lengths, int Hq, int Hk, uint32_t seed, int sink = 0,
                            int lag = 0, int keep = 0, int head_dim = 64) {
  Problem p;
  p.Hq = Hq, p.Hk = Hk, p.sink = sink, p.lag = lag, p.keep = keep, p.D = head_dim;
  const int D = head_dim;
  p.doc_start = {0};
  p.compacted_start = {0};
  for (int n : lengths) {
    p.doc_start.push_back(p.doc_start.back() + n);
    const int selected_partitions = lag ? std::max((n - sink) / lag - 1, 0) : 0;  // those with a complete successor
    p.compacted_start.push_back(p.compacted_start.back() + (lag ? std::min(sink, n) + keep * selected_partitions : 0));
  }
  const int T = p.T = p.doc_start.back();
  for (int b = 0; b < p.documents(); ++b) p.doc_of.insert(p.doc_of.end(), p.length(b), b);
  uint32_t state = seed;
  auto next_u32 = [&] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  auto next = [&] { return __float2bfloat16(float(next_u32()) / float(1 << 24) * 4.0f - 2.0f); };
  p.q.resize(size_t(T) * Hq * D);
  p.k.resize(size_t(T) * Hk * D);
  p.v.resize(size_t(T) * Hk * D);
  for (auto& x : p.q) x = next();
  for (auto& x : p.k) x = next();
  for (auto& x : p.v) x = next();
  if (lag == 0) return p;
  p.ck.resize(size_t(p.compacted_rows()) * Hk * D);
  p.cv.resize(p.ck.size());
  p.compacted_row.assign(Hk, std::vector<int>(T, -1));
  p.compacted_position.assign(Hk, std::vector<int>(p.compacted_rows()));
  for (int h = 0; h < Hk; ++h)
    for (int b = 0; b < p.documents(); ++b) {
      const int begin = p.doc_start[b], rows = p.compacted_start[b + 1] - p.compacted_start[b];
      std::vector<int> positions;  // absolute rows
      for (int j = 0; j < std::min(sink, p.length(b)); ++j) positions.push_back(begin + j);
      for (int part = 0; int(positions.size()) < rows; ++part) {
        std::vector<int> rows_of_part(lag);
        for (int i = 0; i < lag; ++i) rows_of_part[i] = begin + sink + part * lag + i;
        for (int i = 0; i < keep; ++i) std::swap(rows_of_part[i], rows_of_part[i + next_u32() % (lag - i)]);
        std::sort(rows_of_part.begin(), rows_of_part.begin() + keep);
        positions.insert(positions.end(), rows_of_part.begin(), rows_of_part.begin() + keep);
      }
      for (int c = 0; c < rows; ++c) {
        const int row = p.compacted_start[b] + c;
        p.compacted_row[h][positions[c]] = row;
        p.compacted_position[h][row] = positions[c];
        for (int d = 0; d < D; ++d) {
          p.ck[(size_t(row) * Hk + h) * D + d] = p.k[(size_t(positions[c]) * Hk + h) * D + d];
          p.cv[(size_t(row) * Hk + h) * D + d] = p.v[(size_t(positions[c]) * Hk + h) * D + d];
        }
      }
    }
  return p;
}
inline Problem make_problem(int T, int Hq, int Hk, uint32_t seed, int sink = 0, int lag = 0, int keep = 0,
                            int head_dim = 64) {
  return make_problem(std::vector<int>{T}, Hq, Hk, seed, sink, lag, keep, head_dim);
}

// Visible (query, key) pairs of one head: the spec's count per query.
inline double visible_pairs(const Problem& p) {
  double pairs = 0;
  for (int b = 0; b < p.documents(); ++b)
    for (int t = 0; t < p.length(b); ++t) {
      if (p.lag == 0 || t < p.sink + 2 * p.lag) {
        pairs += t + 1;
      } else {
        const int q = p.partition(t);
        pairs += p.sink + double(p.keep) * (q - 1) + p.lag + (t - p.sink - q * p.lag + 1);
      }
    }
  return pairs;
}

// How often a kernel's plan lets each (query row, key position) pair of one KV head through its masks,
// checked on the CPU: a plan is right when it visits every visible pair once and no other pair, and
// no row outside the batch (or outside the compacted rows).
class PairCounts {
 public:
  PairCounts(const Problem& p, int kv_head) : p_(p), kv_head_(kv_head), count_(size_t(p.T) * p.T) {}
  void visit(int query_row, int position) {
    if (query_row < 0 || query_row >= p_.T || position < 0 || position >= p_.T) {
      outside_ = {query_row, position};
      return;
    }
    uint8_t& c = count_[size_t(query_row) * p_.T + position];
    c = uint8_t(std::min(c + 1, 2));
  }
  void visit_compacted(int query_row, int compacted_row) {
    if (compacted_row < 0 || compacted_row >= p_.compacted_rows())
      outside_ = {query_row, p_.T + compacted_row};
    else
      visit(query_row, p_.compacted_position[kv_head_][compacted_row]);
  }
  bool exact(const char* plan) const {
    if (outside_.first >= 0) {
      std::printf("%s: T=%d (%d docs): query row %d sees row %d, outside the batch: FAIL\n", plan, p_.T,
                  p_.documents(), outside_.first, outside_.second);
      return false;
    }
    for (int i = 0; i < p_.T; ++i)
      for (int j = 0; j < p_.T; ++j) {
        const int want = p_.visible(kv_head_, i, j), got = count_[size_t(i) * p_.T + j];
        if (got == want) continue;
        const char* times[] = {"0", "1", "2 or more"};
        std::printf("%s: T=%d (%d docs) S=%d L=%d K=%d, KV head %d: query row %d sees key row %d %s times, "
                    "visible %d: FAIL\n",
                    plan, p_.T, p_.documents(), p_.sink, p_.lag, p_.keep, kv_head_, i, j, times[got], want);
        return false;
      }
    return true;
  }

 private:
  const Problem& p_;
  int kv_head_;
  std::vector<uint8_t> count_;
  std::pair<int, int> outside_{-1, -1};
};

// O and the lse in double, straight from the definition; and the same from the straightforward way
// at the kernels' precision, as PyTorch runs attention in bf16 (S = Q K^T and its scaling rounded to
// bf16, the softmax in fp32 rounded to bf16, O = P V with fp32 sums rounded to bf16). FlashAttention's
// tolerance rule: a kernel's error against double may be at most twice the straightforward way's.
struct Reference {
  std::vector<double> o, lse;
  std::vector<float> o_simple, lse_simple;
};

// fp32 sums of bf16 products, as a bf16 GEMM accumulates.
inline float dot_f32(const __nv_bfloat16* a, const __nv_bfloat16* b, int n) {
  float sum = 0.0f;
  for (int d = 0; d < n; ++d) sum += __bfloat162float(a[d]) * __bfloat162float(b[d]);
  return sum;
}

// The straightforward way's probabilities of query row i of head h (bf16 values; 0 where not
// visible, and for keys past i); returns its log-sum-exp.
inline float simple_probabilities(const Problem& p, int h, int i, std::vector<float>& prob) {
  const int kh = h / (p.Hq / p.Hk), D = p.D;
  const float scale = 1.0f / std::sqrt(float(D));
  float mx = -INFINITY;
  for (int j = 0; j < p.T; ++j) {
    prob[j] = -INFINITY;
    if (j > i || !p.visible(kh, i, j)) continue;
    const float score = bf16_round(dot_f32(&p.q[(size_t(i) * p.Hq + h) * D], &p.k[(size_t(j) * p.Hk + kh) * D], D));
    prob[j] = bf16_round(score * scale);
    mx = std::fmax(mx, prob[j]);
  }
  float sum = 0.0f;
  for (int j = 0; j <= i; ++j) sum += prob[j] == -INFINITY ? 0.0f : std::exp(prob[j] - mx);
  for (int j = 0; j < p.T; ++j) prob[j] = prob[j] == -INFINITY ? 0.0f : bf16_round(std::exp(prob[j] - mx) / sum);
  return mx + std::log(sum);
}

inline Reference reference(const Problem& p) {
  const int T = p.T, Hq = p.Hq, group = p.Hq / p.Hk, D = p.D;
  const double scale = 1.0 / std::sqrt(double(D));
  Reference ref{std::vector<double>(size_t(T) * Hq * D), std::vector<double>(size_t(Hq) * T),
                std::vector<float>(size_t(T) * Hq * D), std::vector<float>(size_t(Hq) * T)};
  std::vector<double> s(T);
  std::vector<float> prob(T);
  for (int h = 0; h < Hq; ++h) {
    const int kh = h / group;
    for (int i = 0; i < T; ++i) {
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        if (!p.visible(kh, i, j)) {
          s[j] = -INFINITY;
          continue;
        }
        double dot = 0;
        for (int d = 0; d < D; ++d)
          dot += double(__bfloat162float(p.q[(size_t(i) * Hq + h) * D + d])) *
                 double(__bfloat162float(p.k[(size_t(j) * p.Hk + kh) * D + d]));
        s[j] = dot * scale;
        mx = std::fmax(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
      const double lse = mx + std::log(sum);
      ref.lse[size_t(h) * T + i] = lse;
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int j = 0; j <= i; ++j)
          if (s[j] != -INFINITY)
            acc += std::exp(s[j] - lse) * double(__bfloat162float(p.v[(size_t(j) * p.Hk + kh) * D + d]));
        ref.o[(size_t(i) * Hq + h) * D + d] = acc;
      }
      ref.lse_simple[size_t(h) * T + i] = simple_probabilities(p, h, i, prob);
      for (int d = 0; d < D; ++d) {
        float acc = 0.0f;
        for (int j = 0; j <= i; ++j) acc += prob[j] * __bfloat162float(p.v[(size_t(j) * p.Hk + kh) * D + d]);
        ref.o_simple[(size_t(i) * Hq + h) * D + d] = bf16_round(acc);
      }
    }
  }
  return ref;
}

// A result's max |error| against double, beside the straightforward way's and the largest reference
// value. FlashAttention's tolerance rule: error <= 2 x the straightforward way's, plus a small floor
// so that an exact match of tiny values does not fail. A NaN result counts as an infinite error.
struct RuleCheck {
  double error = 0, simple = 0, largest = 0;
  bool within(double floor) const { return error <= 2 * simple + floor; }
};

inline float as_float(float x) { return x; }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Got>
RuleCheck rule_check(const std::vector<Got>& got, const std::vector<double>& want, const std::vector<float>& simple) {
  RuleCheck c;
  for (size_t i = 0; i < want.size(); ++i) {
    const float x = as_float(got[i]);
    c.error = std::isnan(x) ? INFINITY : std::fmax(c.error, std::fabs(x - want[i]));
    c.simple = std::fmax(c.simple, std::fabs(simple[i] - want[i]));
    c.largest = std::fmax(c.largest, std::fabs(want[i]));
  }
  return c;
}

// A device copy of host (at least one element's room, so that an empty vector still gets a pointer).
template <typename T>
T* upload(const std::vector<T>& host) {
  T* device = nullptr;
  CHECK_CUDA(cudaMalloc(&device, std::max<size_t>(host.size(), 1) * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return device;
}

