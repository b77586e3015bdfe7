#pragma once
// Shared fixtures of the attention tests: random packed problems, running the public functions,
// and the error measures.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "lrsa/attn/attention.h"
#include "support/compare.h"

namespace lrsa::test {

struct Problem {
  std::vector<int64_t> lengths;  // documents of the packed batch
  int64_t Hq = 2, Hk = 1, D = 16;
  DType dtype = DType::F32;
  uint64_t seed = 1;
  std::string str() const {
    return fmt::format("lengths [{}] Hq {} Hk {} D {} {}", fmt::join(lengths, ", "), Hq, Hk, D, dtype_name(dtype));
  }
};

struct Inputs {
  Tensor q, k, v, dout;  // [T, Hq, D], [T, Hk, D] x 2, [T, Hq, D]
  attn::SeqLayout layout;
};

inline int64_t total_tokens(const Problem& p) {
  int64_t t = 0;
  for (int64_t n : p.lengths) t += n;
  return t;
}

// Standard normal inputs drawn on the CPU (then moved), so every device sees the same numbers.
inline Inputs make_inputs(const Problem& p, Device device = Device::cpu()) {
  const int64_t T = total_tokens(p);
  Inputs in;
  in.q = Tensor::normal({T, p.Hq, p.D}, p.seed, 1, 0.0f, 1.0f, p.dtype).to(device);
  in.k = Tensor::normal({T, p.Hk, p.D}, p.seed, 2, 0.0f, 1.0f, p.dtype).to(device);
  in.v = Tensor::normal({T, p.Hk, p.D}, p.seed, 3, 0.0f, 1.0f, p.dtype).to(device);
  in.dout = Tensor::normal({T, p.Hq, p.D}, p.seed, 4, 0.0f, 1.0f, p.dtype).to(device);
  in.layout = attn::SeqLayout::from_lengths(p.lengths, device);
  return in;
}

inline attn::AttentionConfig lrsa_config(int64_t sink, int64_t lag, double ratio, float lambda = 1.0f) {
  attn::AttentionConfig c;
  c.mode = attn::Mode::Lrsa;
  c.lrsa.sink = sink;
  c.lrsa.lag = lag;
  c.lrsa.ratio = ratio;
  c.lrsa.score_v_ratio = lambda;
  return c;
}

inline attn::AttentionConfig dense_config() { return attn::AttentionConfig{}; }

// Everything one forward + backward produces, as host doubles.
struct Outputs {
  std::vector<double> out, lse, dq, dk, dv;
  std::vector<int64_t> selection;
};

inline Outputs run_attention(const attn::AttentionConfig& config, const Inputs& in) {
  attn::AttentionForward fwd;
  attn::attention_forward(config, in.q, in.k, in.v, in.layout, fwd);
  Tensor dq, dk, dv;
  attn::attention_backward(config, in.q, in.k, in.v, in.layout, fwd, in.dout, dq, dk, dv);
  Outputs o{fwd.out.to_doubles(), fwd.lse.to_doubles(), dq.to_doubles(), dk.to_doubles(), dv.to_doubles(), {}};
  if (fwd.selection.indices.defined()) o.selection = fwd.selection.indices.to_ints();
  return o;
}

inline Outputs from_reference(const attn::ReferenceResult& r) { return {r.out, r.lse, r.dq, r.dk, r.dv, {}}; }

// max |a - b| / max |b|: the error relative to the size of the reference.
inline double rel_max(const std::vector<double>& a, const std::vector<double>& b) {
  double top = 0;
  for (double x : b) top = std::max(top, std::abs(x));
  return max_abs_diff(a, b) / (top + 1e-30);
}

}  // namespace lrsa::test
