#pragma once
// Shared fixtures of the attention tests: random packed problems, running the public functions,
// and the error measures.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
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

// The same inputs with q/k/v copied out of any fused buffer they view.
inline Inputs contiguous(const Inputs& in) {
  Inputs copy = in;
  copy.q = in.q.contiguous();
  copy.k = in.k.contiguous();
  copy.v = in.v.contiguous();
  return copy;
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

// Extra allowance on dK/dV, as a fraction of max |reference|, for LRSA on cuDNN
// (kernels/attn_lrsa_cudnn.h): cuDNN writes each gathered copy's dK/dV in bf16, and a key row's
// gradient is the fp32 sum of its copies (one per virtual sequence that sees it), so it carries
// the copies' roundings (together at most about one bf16 rounding, 2^-8 relative, of the largest
// gradient) on top of the final one that a straightforward bf16 implementation also has.
constexpr double kGatheredCopiesAllowance = 1.0 / 256;

// FlashAttention's rule on every output: ours within 2x the error of the baseline against the
// reference (+ a floor relative to the size of the reference; + grad_allowance of it on dK/dV).
inline void check_rule(const Outputs& ours, const Outputs& baseline, const Outputs& ref, double grad_allowance = 0) {
  auto rule = [](const char* name, const std::vector<double>& a, const std::vector<double>& b,
                 const std::vector<double>& r, double allowance) {
    double top = 0;
    for (double x : r) top = std::max(top, std::abs(x));
    INFO(name << ": ours " << max_abs_diff(a, r) << " baseline " << max_abs_diff(b, r) << " (max |ref| " << top
              << ", allowance " << allowance << " of it)");
    CHECK(within_rule(a, b, r, (1e-5 + allowance) * top));
  };
  rule("out", ours.out, baseline.out, ref.out, 0);
  rule("lse", ours.lse, baseline.lse, ref.lse, 0);
  rule("dq", ours.dq, baseline.dq, ref.dq, 0);
  rule("dk", ours.dk, baseline.dk, ref.dk, grad_allowance);
  rule("dv", ours.dv, baseline.dv, ref.dv, grad_allowance);
}

}  // namespace lrsa::test
