// dev/attention_problem.h: the attention problems the Hopper dev harnesses check and time: random
// bf16 Q/K/V of one document, dense causal or LRSA with a random selection, and the reference in double.
#pragma once
#include "hopper.cuh"

#include <algorithm>

// Which keys a query row sees, as two intervals (../shared/lrsa-spec.md, "Visibility"): compacted rows
// [0, compacted_end) of [sink | Sel(0) | Sel(1) | ...], and raw positions [raw_begin, t]. Dense causal
// attention is lag 0: no compacted rows, raw [0, t].
struct Lrsa {
  int sink, lag, keep;  // S, L, K; lag 0: dense causal
  float inverse_lag;    // 1 / L: the masks divide by L per element, and an integer division costs ~20 instructions
  Lrsa(int sink, int lag, int keep)
      : sink(sink), lag(lag), keep(keep), inverse_lag(lag ? 1.0f / float(lag) : 0.0f) {}
  // floor((t - S) / L) for t >= S: the float quotient is off by at most one for t < 2^24; the compares fix it.
  __host__ __device__ int partition(int t) const {
    int part = int(float(t - sink) * inverse_lag);
    if (sink + part * lag > t) --part;
    if (sink + (part + 1) * lag <= t) ++part;
    return part;
  }
  __host__ __device__ int compacted_end(int t) const {
    if (lag == 0) return 0;
    return t < sink ? t + 1 : sink + keep * max(partition(t) - 1, 0);
  }
  __host__ __device__ int raw_begin(int t) const {  // t < S: past t, so nothing raw
    if (lag == 0) return 0;
    return t < sink ? t + 1 : sink + lag * max(partition(t) - 1, 0);
  }
};

// One document of T tokens; lag 0 is dense causal attention. For LRSA the selection is random (any
// sorted K rows per partition: the kernel does not care how they were chosen) and the compacted
// K/V hold, per KV head, [sink | Sel(0) | Sel(1) | ...] as the kernel expects.
struct Problem {
  int T = 0, Hq = 0, Hk = 0, sink = 0, lag = 0, keep = 0;
  std::vector<__nv_bfloat16> q, k, v, ck, cv;
  std::vector<std::vector<int>> compacted_row;  // [Hk][T]: the position's row in ck/cv, or -1
  int compacted_rows() const { return int(ck.size() / (size_t(Hk) * kD)); }
  Lrsa lrsa() const { return Lrsa(sink, lag, keep); }
  int partition(int t) const { return (t - sink) / lag; }
  bool visible(int kv_head, int t, int j) const {  // ../shared/lrsa-spec.md, "Visibility"
    if (j > t) return false;
    if (lag == 0 || j < sink) return true;
    if (t < sink) return false;
    return partition(j) >= partition(t) - 1 || compacted_row[kv_head][j] >= 0;
  }
};

inline float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

inline Problem make_problem(int T, int Hq, int Hk, uint32_t seed, int sink = 0, int lag = 0, int keep = 0) {
  Problem p;
  p.T = T, p.Hq = Hq, p.Hk = Hk, p.sink = sink, p.lag = lag, p.keep = keep;
  uint32_t state = seed;
  auto next_u32 = [&] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  auto next = [&] { return __float2bfloat16(float(next_u32()) / float(1 << 24) * 4.0f - 2.0f); };
  p.q.resize(size_t(T) * Hq * kD);
  p.k.resize(size_t(T) * Hk * kD);
  p.v.resize(size_t(T) * Hk * kD);
  for (auto& x : p.q) x = next();
  for (auto& x : p.k) x = next();
  for (auto& x : p.v) x = next();
  if (lag == 0) return p;
  const int selected_partitions = std::max((T - sink) / lag - 1, 0);  // those with a complete successor
  const int rows = sink + keep * selected_partitions;
  p.ck.resize(size_t(rows) * Hk * kD);
  p.cv.resize(p.ck.size());
  p.compacted_row.assign(Hk, std::vector<int>(T, -1));
  for (int h = 0; h < Hk; ++h) {
    std::vector<int> positions;
    for (int j = 0; j < sink; ++j) positions.push_back(j);
    for (int part = 0; part < selected_partitions; ++part) {
      std::vector<int> rows_of_part(lag);
      for (int i = 0; i < lag; ++i) rows_of_part[i] = sink + part * lag + i;
      for (int i = 0; i < keep; ++i) std::swap(rows_of_part[i], rows_of_part[i + next_u32() % (lag - i)]);
      std::sort(rows_of_part.begin(), rows_of_part.begin() + keep);
      for (int i = 0; i < keep; ++i) positions.push_back(rows_of_part[i]);
    }
    for (int c = 0; c < rows; ++c) p.compacted_row[h][positions[c]] = c;
    for (int c = 0; c < rows; ++c)
      for (int d = 0; d < kD; ++d) {
        p.ck[(size_t(c) * Hk + h) * kD + d] = p.k[(size_t(positions[c]) * Hk + h) * kD + d];
        p.cv[(size_t(c) * Hk + h) * kD + d] = p.v[(size_t(positions[c]) * Hk + h) * kD + d];
      }
  }
  return p;
}

// Visible (query, key) pairs of one head: the spec's count per query.
inline double visible_pairs(const Problem& p) {
  double pairs = 0;
  for (int t = 0; t < p.T; ++t) {
    if (p.lag == 0 || t < p.sink + 2 * p.lag) {
      pairs += t + 1;
    } else {
      const int q = p.partition(t);
      pairs += p.sink + double(p.keep) * (q - 1) + p.lag + (t - p.sink - q * p.lag + 1);
    }
  }
  return pairs;
}

// O and the lse in double, straight from the definition; and the same from the straightforward way
// at the kernels' precision, as PyTorch runs attention in bf16 (S = Q K^T and its scaling rounded to
// bf16, the softmax in fp32 rounded to bf16, O = P V with fp32 sums rounded to bf16). FlashAttention's
// tolerance rule: a kernel's error against double may be at most twice the straightforward way's.
struct Reference {
  std::vector<double> o, lse;
  std::vector<float> o_simple, lse_simple;
};

// fp32 sums of bf16 products, as a bf16 GEMM accumulates.
inline float dot_f32(const __nv_bfloat16* a, const __nv_bfloat16* b) {
  float sum = 0.0f;
  for (int d = 0; d < kD; ++d) sum += __bfloat162float(a[d]) * __bfloat162float(b[d]);
  return sum;
}

// The straightforward way's probabilities of query row i of head h (bf16 values; 0 where not
// visible, and for keys past i); returns its log-sum-exp.
inline float simple_probabilities(const Problem& p, int h, int i, std::vector<float>& prob) {
  const int kh = h / (p.Hq / p.Hk);
  const float scale = 1.0f / std::sqrt(float(kD));
  float mx = -INFINITY;
  for (int j = 0; j < p.T; ++j) {
    prob[j] = -INFINITY;
    if (j > i || !p.visible(kh, i, j)) continue;
    const float score = bf16_round(dot_f32(&p.q[(size_t(i) * p.Hq + h) * kD], &p.k[(size_t(j) * p.Hk + kh) * kD]));
    prob[j] = bf16_round(score * scale);
    mx = std::fmax(mx, prob[j]);
  }
  float sum = 0.0f;
  for (int j = 0; j <= i; ++j) sum += prob[j] == -INFINITY ? 0.0f : std::exp(prob[j] - mx);
  for (int j = 0; j < p.T; ++j) prob[j] = prob[j] == -INFINITY ? 0.0f : bf16_round(std::exp(prob[j] - mx) / sum);
  return mx + std::log(sum);
}

inline Reference reference(const Problem& p) {
  const int T = p.T, Hq = p.Hq, group = p.Hq / p.Hk;
  const double scale = 1.0 / std::sqrt(double(kD));
  Reference ref{std::vector<double>(size_t(T) * Hq * kD), std::vector<double>(size_t(Hq) * T),
                std::vector<float>(size_t(T) * Hq * kD), std::vector<float>(size_t(Hq) * T)};
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
        for (int d = 0; d < kD; ++d)
          dot += double(__bfloat162float(p.q[(size_t(i) * Hq + h) * kD + d])) *
                 double(__bfloat162float(p.k[(size_t(j) * p.Hk + kh) * kD + d]));
        s[j] = dot * scale;
        mx = std::fmax(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
      const double lse = mx + std::log(sum);
      ref.lse[size_t(h) * T + i] = lse;
      for (int d = 0; d < kD; ++d) {
        double acc = 0;
        for (int j = 0; j <= i; ++j)
          if (s[j] != -INFINITY)
            acc += std::exp(s[j] - lse) * double(__bfloat162float(p.v[(size_t(j) * p.Hk + kh) * kD + d]));
        ref.o[(size_t(i) * Hq + h) * kD + d] = acc;
      }
      ref.lse_simple[size_t(h) * T + i] = simple_probabilities(p, h, i, prob);
      for (int d = 0; d < kD; ++d) {
        float acc = 0.0f;
        for (int j = 0; j <= i; ++j) acc += prob[j] * __bfloat162float(p.v[(size_t(j) * p.Hk + kh) * kD + d]);
        ref.o_simple[(size_t(i) * Hq + h) * kD + d] = bf16_round(acc);
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

inline __nv_bfloat16* upload(const std::vector<__nv_bfloat16>& host) {
  __nv_bfloat16* device = nullptr;
  CHECK_CUDA(cudaMalloc(&device, std::max<size_t>(host.size(), 1) * 2));
  CHECK_CUDA(cudaMemcpy(device, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  return device;
}

