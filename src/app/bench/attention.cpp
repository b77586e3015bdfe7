// lrsa-bench attention: the CUDA attention, dense causal vs LRSA, per backend (our native
// kernels, cuDNN's SDPA, our Hopper kernels: AttentionConfig::backend), at the Qwen2.5 head shapes (14:2 x d64 as in
// 0.5B, 28:4 x d128 as in 7B) over one long document. A backend that cannot run a mode (e.g. no
// cuDNN in the build) is skipped with the reason.
//
// 1. Self-check: small packed problems (dense and LRSA, GQA, d64 and d128, both backward
//    modes, each backend) run on the GPU and through the CPU implementation (the same public attn:: calls,
//    dispatched by device); out, lse, dq, dk, dv are compared, the LRSA selection must be equal,
//    and the deterministic backward must repeat bit for bit.
// 2. Per shape and T: forward, backward and forward + backward times (CUDA events, median; with
//    --rounds N every case is timed once a round, in turn, and each pass reports the median over
//    the rounds) for dense and LRSA, and the LagKV selection alone. Throughput counts the
//    (query, key) pairs the visibility rule admits, exactly: forward 4 * pairs * D * Hq FLOPs
//    (Q K^T and P V), backward 10 * pairs * D * Hq (the recomputed Q K^T, dV, dP, dK, dQ). The
//    LRSA rows name the fastest dense forward + backward measured as their reference (vs ref =
//    dense time / LRSA time; issue 5 compares LRSA with our fastest dense) and note the
//    dense-equivalent rate (the dense problem's FLOPs over the LRSA time); the other backends'
//    dense rows name dense native as theirs.
#include <algorithm>
#include <cmath>
#include <memory>

#include "app/bench/bench.h"
#include "lrsa/attn/attention.h"

namespace lrsa::bench {
namespace {

using attn::backend_name;

struct HeadShape {
  std::string name;
  int64_t hq, hk, d;
};
const std::vector<HeadShape> kShapes = {{"14:2xd64", 14, 2, 64}, {"28:4xd128", 28, 4, 128}};

struct AttentionOptions {
  CommonOptions common;
  std::vector<std::string> shapes = {"14:2xd64", "28:4xd128"};
  std::vector<int64_t> tokens = {8192, 16384, 32768, 65536, 131072};
  int64_t sink = 16, lag = 1024;
  double ratio = 0.25;
  std::vector<std::string> backends = {"native", "cudnn"};
  bool deterministic = false;
  double cudnn_gather_gib = attn::kDefaultCudnnGatherGib;
  bool skip_checks = false;
  bool fused_qkv = false;
  int rounds = 1;
};

const Device kGpu = Device::cuda(0);
const Device kCpu = Device::cpu();

// GPU vs CPU, both bf16 with fp32 accumulation: they differ by bf16 roundings of intermediates
// (P, dS) taken at different points. A kernel bug shows up as O(1) errors.
constexpr double kRtol = 2e-2, kAtol = 2e-2;

attn::AttentionConfig lrsa_config(int64_t sink, int64_t lag, double ratio) {
  attn::AttentionConfig c;
  c.mode = attn::Mode::Lrsa;
  c.lrsa.sink = sink;
  c.lrsa.lag = lag;
  c.lrsa.ratio = ratio;
  return c;
}

// The (query, key) pairs the visibility rule admits (docs/lrsa-spec.md, "Visibility"), summed
// over the documents, per head.
double visible_pairs(const attn::AttentionConfig& config, const std::vector<int64_t>& cu_seqlens) {
  double pairs = 0;
  const attn::LrsaParams& p = config.lrsa;
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    const int64_t n = cu_seqlens[b + 1] - cu_seqlens[b];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t q = t < p.sink ? 0 : (t - p.sink) / p.lag;
      if (config.mode == attn::Mode::Dense || q <= 1) pairs += double(t + 1);
      else pairs += double(p.sink + p.kept() * (q - 1) + p.lag + (t - p.sink - q * p.lag + 1));
    }
  }
  return pairs;
}

struct Problem {
  Tensor q, k, v, dout;
  Tensor dq, dk, dv;  // preset gradient views (fused layout), else undefined: allocated by the call
  attn::SeqLayout layout;
};

// Separate contiguous q, k, v (and gradients allocated by the backward), or `fused`: q, k, v as
// views of one [T, (Hq + 2 Hk) D] buffer and dq, dk, dv of another, the decoder's layout.
Problem make_problem(const HeadShape& s, const std::vector<int64_t>& lengths, Device device, uint64_t seed,
                     bool fused = false) {
  int64_t T = 0;
  for (int64_t n : lengths) T += n;
  Problem p;
  if (fused) {
    const int64_t qd = s.hq * s.d, kvd = s.hk * s.d;
    const Tensor qkv = Tensor::normal({T, qd + 2 * kvd}, seed, 1, 0.0f, 1.0f, DType::BF16, device);
    const Tensor dqkv = Tensor::empty({T, qd + 2 * kvd}, DType::BF16, device);
    auto heads = [&](const Tensor& t, int64_t from, int64_t h) { return t.slice(1, from, from + h * s.d).unflatten(1, {h, s.d}); };
    p.q = heads(qkv, 0, s.hq), p.k = heads(qkv, qd, s.hk), p.v = heads(qkv, qd + kvd, s.hk);
    p.dq = heads(dqkv, 0, s.hq), p.dk = heads(dqkv, qd, s.hk), p.dv = heads(dqkv, qd + kvd, s.hk);
  } else {
    p.q = Tensor::normal({T, s.hq, s.d}, seed, 1, 0.0f, 1.0f, DType::BF16, device);
    p.k = Tensor::normal({T, s.hk, s.d}, seed, 2, 0.0f, 1.0f, DType::BF16, device);
    p.v = Tensor::normal({T, s.hk, s.d}, seed, 3, 0.0f, 1.0f, DType::BF16, device);
  }
  p.dout = Tensor::normal({T, s.hq, s.d}, seed, 4, 0.0f, 1.0f, DType::BF16, device);
  p.layout = attn::SeqLayout::from_lengths(lengths, device);
  return p;
}

struct Grads {
  attn::AttentionForward fwd;
  Tensor dq, dk, dv;
};

Grads run(const attn::AttentionConfig& config, const Problem& p) {
  Grads g{{}, p.dq, p.dk, p.dv};
  attn::attention_forward(config, p.q, p.k, p.v, p.layout, g.fwd);
  attn::attention_backward(config, p.q, p.k, p.v, p.layout, g.fwd, p.dout, g.dq, g.dk, g.dv);
  return g;
}

Check equal_ints(const std::string& name, const Tensor& gpu, const Tensor& cpu) {
  Check c;
  c.name = name;
  const std::vector<int64_t> g = gpu.to_ints(), h = cpu.to_ints();
  for (size_t i = 0; i < g.size() && c.pass; ++i) {
    if (g[i] != h[i]) {
      c.pass = false;
      c.max_error = 1;
      c.detail = fmt::format("element {}: gpu {} cpu {}", i, g[i], h[i]);
    }
  }
  if (g.size() != h.size()) {
    c.pass = false;
    c.detail = fmt::format("{} vs {} elements", g.size(), h.size());
  }
  return c;
}

// Runs `fn`; when the backend refuses the call (lrsa::Error, e.g. cuDNN missing or a mode it
// does not cover), prints why and returns false.
template <typename Fn>
bool runs(const std::string& what, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const Error& e) {
    std::printf("skipped %s: %s\n", what.c_str(), e.what());
    return false;
  }
}

// Returns whether every check passed.
bool run_checks(Report& report, const std::vector<attn::Backend>& backends) {
  struct Case {
    const char* name;
    int64_t hq, hk, d;
    std::vector<int64_t> lengths;
    attn::AttentionConfig config;
  };
  const std::vector<Case> cases = {
      {"dense 4:2xd64 packed", 4, 2, 64, {700, 333}, attn::AttentionConfig{}},
      {"dense 4:1xd128", 4, 1, 128, {500}, attn::AttentionConfig{}},
      {"lrsa S16 L128 r.25 4:2xd64 packed", 4, 2, 64, {1100, 450}, lrsa_config(16, 128, 0.25)},
      {"lrsa S5 L64 r.3 4:1xd128", 4, 1, 128, {900}, lrsa_config(5, 64, 0.3)},
      {"lrsa S0 L64 r1 (== dense) 2:2xd64", 2, 2, 64, {400}, lrsa_config(0, 64, 1.0)},
  };
  bool all = true;
  uint64_t seed = 9100;
  for (const Case& c : cases) {
    const HeadShape shape{c.name, c.hq, c.hk, c.d};
    const Problem cpu = make_problem(shape, c.lengths, kCpu, seed);
    const Problem gpu = make_problem(shape, c.lengths, kGpu, seed++);
    const Grads want = run(c.config, cpu);
    for (attn::Backend backend : backends) {
      for (bool deterministic : {false, true}) {
        attn::AttentionConfig config = c.config;
        config.deterministic = deterministic;
        config.backend = backend;
        const std::string tag =
            std::string(c.name) + " " + backend_name(backend) + (deterministic ? " det" : "");
        Grads got;
        if (!runs(tag, [&] { got = run(config, gpu); })) continue;
        std::vector<Check> checks = {compare("attention out: " + tag, got.fwd.out, want.fwd.out, kRtol, kAtol),
                                     compare("attention lse: " + tag, got.fwd.lse, want.fwd.lse, kRtol, kAtol),
                                     compare("attention dq: " + tag, got.dq, want.dq, kRtol, kAtol),
                                     compare("attention dk: " + tag, got.dk, want.dk, kRtol, kAtol),
                                     compare("attention dv: " + tag, got.dv, want.dv, kRtol, kAtol)};
        if (config.mode == attn::Mode::Lrsa)
          checks.push_back(equal_ints("lrsa selection: " + tag, got.fwd.selection.indices, want.fwd.selection.indices));
        if (deterministic) {
          const Grads again = run(config, gpu);
          checks.push_back(compare("deterministic dq repeats: " + tag, again.dq, got.dq, 0, 0));
          checks.push_back(compare("deterministic dk repeats: " + tag, again.dk, got.dk, 0, 0));
          checks.push_back(compare("deterministic dv repeats: " + tag, again.dv, got.dv, 0, 0));
        }
        for (const Check& k : checks) {
          report.add_check(k);
          all = all && k.pass;
        }
      }
    }
  }
  return all;
}

class Bench {
 public:
  Bench(Report& report, const AttentionOptions& options, std::vector<attn::Backend> backends, std::string check)
      : report_(report), options_(options), backends_(std::move(backends)), check_(std::move(check)) {}

  void shape(const HeadShape& s, int64_t T) {
    const Problem p = make_problem(s, {T}, kGpu, 42, options_.fused_qkv);
    const attn::AttentionConfig lrsa = config(lrsa_config(options_.sink, options_.lag, options_.ratio));
    const double dense_pairs = visible_pairs(attn::AttentionConfig{}, p.layout.cu_seqlens);
    const double lrsa_pairs = visible_pairs(lrsa, p.layout.cu_seqlens);
    // Dense first (the references), then LRSA, each on every backend that runs it.
    std::vector<Case> cases;
    for (const bool is_lrsa : {false, true})
      for (attn::Backend b : backends_) {
        Case c{fmt::format("{} {}", is_lrsa ? "lrsa" : "dense", backend_name(b)),
               is_lrsa ? lrsa : config(attn::AttentionConfig{}), {}, {}, {}};
        c.config.backend = b;
        if (runs(fmt::format("{} at {} {}", c.label, s.name, T), [&] { c.grads = run(c.config, p); }))
          cases.push_back(std::move(c));
      }
    // Every case once a round, in turn: under the H200's power cap the clocks move by up to 15%
    // for a fraction of a second (most after the load starts), so cases timed one after another
    // compare unevenly; the median over rounds takes the same share of that from each.
    for (int round = 0; round < options_.rounds; ++round)
      for (Case& c : cases) c.rounds.push_back(measure(c.config, p, c.grads));
    for (Case& c : cases) c.times = median_times(c.rounds);
    // LRSA against the fastest dense forward + backward measured (issue 5: "our dense"); the other
    // backends' dense against dense native.
    const Case* fastest_dense = nullptr;
    const Case* native_dense = nullptr;
    for (const Case& c : cases)
      if (c.config.mode == attn::Mode::Dense) {
        if (fastest_dense == nullptr || c.times.both < fastest_dense->times.both) fastest_dense = &c;
        if (c.config.backend == attn::Backend::Native) native_dense = &c;
      }
    double lrsa_fwd_ms = 0;
    for (const Case& c : cases) {
      if (c.config.mode == attn::Mode::Dense)
        add(s, T, c, dense_pairs, 0, c.config.backend == attn::Backend::Native ? nullptr : native_dense);
      else {
        add(s, T, c, lrsa_pairs, dense_pairs, fastest_dense);
        if (lrsa_fwd_ms == 0) lrsa_fwd_ms = c.times.fwd;
      }
    }
    const double sel_ms = time_ms([&] { attn::lrsa_select(p.k, p.v, p.layout, lrsa.lrsa); }, options_.common);
    // Selection reads every candidate and reference row of K and V once (rows of the last
    // partitions that are neither are not counted).
    const int64_t parts = attn::selectable_partitions(T, lrsa.lrsa);
    Row row = base_row(s, T, "lrsa select");
    row.ms = sel_ms;
    row.bytes = 2.0 * 2.0 * double(parts) * double(options_.lag) * double(s.hk * s.d) * 2.0;
    row.formula = "bytes = 2 (K, V) * 2 (candidate + reference partition) * partitions * L * Hk * D * 2 B";
    if (lrsa_fwd_ms > 0)
      row.note = fmt::format("{:.1f}% of the LRSA forward ({} partitions x {} KV heads)", 100.0 * sel_ms / lrsa_fwd_ms,
                             parts, s.hk);
    report_.add(row);
  }

 private:
  struct Times {
    double fwd = 0, bwd = 0, both = 0;
  };
  // One mode on one backend: its outputs (allocated once) and its times, per round and overall.
  struct Case {
    std::string label;  // mode and backend, as the rows name them
    attn::AttentionConfig config;
    Grads grads;
    std::vector<Times> rounds;
    Times times;  // the median over rounds of each pass
  };

  static Times median_times(const std::vector<Times>& rounds) {
    auto median_of = [&](double Times::*pass) {
      std::vector<double> values;
      for (const Times& t : rounds) values.push_back(t.*pass);
      return median(std::move(values));
    };
    return {median_of(&Times::fwd), median_of(&Times::bwd), median_of(&Times::both)};
  }

  attn::AttentionConfig config(attn::AttentionConfig c) const {
    c.deterministic = options_.deterministic;
    c.cudnn_gather_gib = options_.cudnn_gather_gib;
    return c;
  }

  Times measure(const attn::AttentionConfig& config, const Problem& p, Grads& g) const {
    const CommonOptions& timing = options_.common;
    Times t;
    t.fwd = time_ms([&] { attn::attention_forward(config, p.q, p.k, p.v, p.layout, g.fwd); }, timing);
    t.bwd = time_ms([&] { attn::attention_backward(config, p.q, p.k, p.v, p.layout, g.fwd, p.dout, g.dq, g.dk, g.dv); },
                    timing);
    t.both = time_ms(
        [&] {
          attn::attention_forward(config, p.q, p.k, p.v, p.layout, g.fwd);
          attn::attention_backward(config, p.q, p.k, p.v, p.layout, g.fwd, p.dout, g.dq, g.dk, g.dv);
        },
        timing);
    return t;
  }

  Row base_row(const HeadShape& s, int64_t T, const std::string& op) const {
    Row row;
    row.family = "attention";
    row.op = op;
    row.config = s.name;
    row.tokens = T;
    row.shape = fmt::format("Hq {} Hk {} D {}{}", s.hq, s.hk, s.d, options_.fused_qkv ? " fused qkv" : "");
    row.dtype = "bf16";
    row.check = check_;
    return row;
  }

  // Three rows (fwd, bwd, fwd+bwd) of one case against the dense case `ref` (none for dense
  // native); LRSA rows (dense_pairs > 0) also note the dense-equivalent rate, and with several
  // rounds every row notes their spread.
  void add(const HeadShape& s, int64_t T, const Case& c, double pairs, double dense_pairs, const Case* ref) {
    const bool lrsa = dense_pairs > 0;
    const double per_pair = double(s.d * s.hq);
    const struct {
      std::string name;
      double Times::*pass;
      double flops_per_pair;
      std::string formula;
    } phases[] = {
        {"fwd", &Times::fwd, 4, "4 * visible pairs * D * Hq (Q K^T, P V)"},
        {"bwd", &Times::bwd, 10, "10 * visible pairs * D * Hq (Q K^T recomputed, dV, dP, dK, dQ)"},
        {"fwd+bwd", &Times::both, 14, "14 * visible pairs * D * Hq"},
    };
    for (const auto& ph : phases) {
      Row row = base_row(s, T, "attn " + ph.name + " " + c.label);
      row.ms = c.times.*ph.pass;
      row.flops = ph.flops_per_pair * pairs * per_pair;
      row.formula = ph.formula + (lrsa ? ", LRSA forward includes the selection" : "");
      std::string note;
      auto add_note = [&](const std::string& text) { note += (note.empty() ? "" : "; ") + text; };
      if (ref != nullptr) {
        row.ref_ms = ref->times.*ph.pass;
        row.ref_name = ref->label;
        if (lrsa) {
          const double dense_equiv = ph.flops_per_pair * dense_pairs * per_pair / (row.ms * 1e-3) / 1e12;
          add_note(fmt::format("dense-equiv {:.1f} TFLOP/s, LRSA/dense time {:.3f}, pairs {:.3f} of dense", dense_equiv,
                               row.ms / row.ref_ms, pairs / dense_pairs));
        }
      }
      if (c.rounds.size() > 1) {
        const auto [low, high] = std::minmax_element(c.rounds.begin(), c.rounds.end(), [&](const Times& x, const Times& y) {
          return x.*ph.pass < y.*ph.pass;
        });
        add_note(fmt::format("{} rounds {:.3f}-{:.3f} ms", c.rounds.size(), (*low).*ph.pass, (*high).*ph.pass));
      }
      row.note = note;
      report_.add(row);
    }
  }

  Report& report_;
  const AttentionOptions& options_;
  std::vector<attn::Backend> backends_;
  std::string check_;
};

int run_attention(const AttentionOptions& options) {
  std::vector<HeadShape> shapes;
  for (const std::string& name : options.shapes) {
    auto it = std::find_if(kShapes.begin(), kShapes.end(), [&](const HeadShape& s) { return s.name == name; });
    LRSA_CHECK(it != kShapes.end(), "lrsa-bench attention: unknown shape '{}' (expected 14:2xd64 or 28:4xd128)", name);
    shapes.push_back(*it);
  }
  std::vector<attn::Backend> backends;
  for (const std::string& name : options.backends) {
    const auto& names = attn::kBackendNames;
    const auto it =
        std::find_if(std::begin(names), std::end(names), [&](const attn::BackendName& b) { return name == b.name; });
    std::string expected;
    for (const attn::BackendName& b : names) expected += (expected.empty() ? "" : ", ") + std::string(b.name);
    LRSA_CHECK(it != std::end(names), "lrsa-bench attention: unknown backend '{}' (expected one of {})", name,
               expected);
    backends.push_back(it->backend);
  }
  if (!require_gpu("lrsa-bench attention")) return 2;
  const Ceilings ceilings = measure_ceilings(options.common);
  Report report("attention", options.common, ceilings);
  std::string check;
  if (!options.skip_checks) check = run_checks(report, backends) ? "PASS" : "FAIL";
  std::printf("\nLRSA: sink %lld, lag %lld, ratio %.3g (K = %lld); backward dQ %s\n", (long long)options.sink,
              (long long)options.lag, options.ratio, (long long)lrsa_config(options.sink, options.lag, options.ratio).lrsa.kept(),
              options.deterministic ? "deterministic (separate dQ pass)" : "atomic (f32 accumulator)");
  Bench bench(report, options, backends, check);
  for (const HeadShape& s : shapes)
    for (int64_t T : options.tokens) bench.shape(s, T);
  return report.finish();
}

}  // namespace

Subcommand register_attention(CLI::App& app) {
  auto options = std::make_shared<AttentionOptions>();
  // Each pass runs 200 ms before it is timed, so its clocks have settled to its own power draw: with
  // a few calls only, the LRSA d64 forward + backward took 2.8% longer when cuDNN's cases ran before
  // it than when they did not (docs/benchmarks.md, session 33).
  options->common.warmup_ms = 200;
  CLI::App* sub = app.add_subcommand("attention", "CUDA attention: dense causal vs LRSA per backend, forward/backward, selection");
  add_common_options(sub, options->common);
  sub->add_option("--shapes", options->shapes, "head shapes among 14:2xd64, 28:4xd128");
  sub->add_option("--tokens", options->tokens, "sequence lengths T (one document each)");
  sub->add_option("--sink", options->sink, "LRSA sink S");
  sub->add_option("--lag", options->lag, "LRSA lag L (a multiple of 64 on the GPU)");
  sub->add_option("--ratio", options->ratio, "LRSA kept ratio r");
  sub->add_option("--backends", options->backends, "attention backends among native, cudnn, wgmma, auto (each mode on each)");
  sub->add_flag("--deterministic", options->deterministic, "time the deterministic backward (no atomics)");
  sub->add_option("--cudnn-gather-gib", options->cudnn_gather_gib,
                  "memory of one LRSA-on-cuDNN call (gathered keys and cuDNN's workspace) in GiB: more calls "
                  "when smaller (attention.cudnn_gather_gib)")
      ->check(CLI::PositiveNumber & CLI::Range(0.0, attn::kMaxCudnnGatherGib));
  sub->add_flag("--skip-checks", options->skip_checks, "skip the GPU-vs-CPU self-checks");
  sub->add_option("--rounds", options->rounds,
                  "time every case once per round, in turn, and report each pass's median over the rounds (the "
                  "GPU's clocks move with its power cap; ratios within ~10% need several rounds)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--fused-qkv", options->fused_qkv,
                "time q, k, v and their gradients as views of fused [T, (Hq + 2 Hk) D] buffers, as the decoder lays them out");
  return {sub, [options] { return run_attention(*options); }};
}

}  // namespace lrsa::bench
