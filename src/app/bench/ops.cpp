// lrsa-bench ops: the runtime ops on the GPU at Qwen2.5 shapes.
//
// 1. Self-check: every benchmarked op runs on small random inputs on the GPU and on the CPU
//    (the same public lrsa::ops call, dispatched by device) and the results are compared
//    (PASS/FAIL per case; the table's check column aggregates the op's cases).
// 2. Ceilings: device copy bandwidth and cuBLAS bf16 GEMM throughput, measured in the same run.
// 3. Per model (0.5B, 1.5B, 7B) and tokens T: the linear-layer GEMMs (forward, dx, dW) against
//    cuBLAS called directly on the same problem (required ratio >= 0.9), the memory-bound ops
//    against the copy ceiling, cross-entropy, AdamW and the gradient norm over one decoder
//    layer, and the lm_head loss (softmax/CE work vs the lm_head GEMMs).
#include <cmath>
#include <map>
#include <memory>

#include "app/bench/bench.h"
#include "lrsa/ops/cross_entropy.h"
#include "lrsa/ops/elementwise.h"
#include "lrsa/ops/embedding.h"
#include "lrsa/ops/matmul.h"
#include "lrsa/ops/optimizer.h"
#include "lrsa/ops/rmsnorm.h"
#include "lrsa/ops/rope.h"
#include "lrsa/ops/swiglu.h"
#ifdef LRSA_WITH_CUDA
#include "lrsa/ops/cuda_ops.h"
#endif

namespace lrsa::bench {
namespace {

struct ModelShape {
  std::string name;
  int64_t hidden, heads, kv_heads, head_dim, mlp;
};
const std::vector<ModelShape> kModels = {
    {"0.5B", 896, 14, 2, 64, 4864},
    {"1.5B", 1536, 12, 2, 128, 8960},
    {"7B", 3584, 28, 4, 128, 18944},
};
constexpr int64_t kVocab = 151936;
constexpr double kRopeTheta = 1e6;
constexpr float kEps = 1e-6f;
constexpr double kMinGemmRatio = 0.9;

struct OpsOptions {
  CommonOptions common;
  std::vector<std::string> models = {"0.5B", "1.5B", "7B"};
  std::vector<int64_t> tokens = {8192, 16384, 32768};
  int64_t lm_head_tokens = 32768;
  int64_t lm_head_chunk = 8192;
  int gemm_candidates = ops::kTrainingGemmCandidates;  // as training runs them
  bool skip_checks = false;
};

const Device kGpu = Device::cuda(0);
const Device kCpu = Device::cpu();

// Tolerances of the self-checks (see compare()): a bf16 result may differ by a rounding of a
// slightly different fp32 value (1 ulp = 2^-8 relative), fp32 results by summation order.
constexpr double kBf16Rtol = 1.0 / 128, kBf16Atol = 1e-3;
constexpr double kF32Rtol = 1e-4, kF32Atol = 1e-5;
double rtol_for(DType t) { return t == DType::BF16 ? kBf16Rtol : kF32Rtol; }
double atol_for(DType t) { return t == DType::BF16 ? kBf16Atol : kF32Atol; }

Tensor random(const Shape& shape, DType dtype, uint64_t stream, float std = 1.0f, Device device = kCpu) {
  return Tensor::normal(shape, 20260601, stream, 0.0f, std, dtype, device);
}

// Aggregates the cases of each op (the name's prefix before ':') into PASS/FAIL.
class Checks {
 public:
  explicit Checks(Report& report) : report_(report) {}
  void add(const Check& check) {
    report_.add_check(check);
    const std::string key = check.name.substr(0, check.name.find(':'));
    auto [it, inserted] = status_.emplace(key, check.pass);
    if (!inserted) it->second = it->second && check.pass;
  }
  void compare(const std::string& name, const Tensor& gpu, const Tensor& cpu, double rtol, double atol) {
    add(bench::compare(name, gpu, cpu, rtol, atol));
  }
  void compare(const std::string& name, const Tensor& gpu, const Tensor& cpu) {
    compare(name, gpu, cpu, rtol_for(cpu.dtype()), atol_for(cpu.dtype()));
  }
  void scalar(const std::string& name, double gpu, double cpu, double rtol) {
    Check c;
    c.name = name;
    c.max_error = std::abs(gpu - cpu) / std::max(std::abs(cpu), 1e-30);
    c.pass = c.max_error <= rtol;
    if (!c.pass) c.detail = fmt::format("gpu {} cpu {}", gpu, cpu);
    add(c);
  }
  // The call must throw lrsa::Error (an argument the op has to reject).
  void rejects(const std::string& name, const std::function<void()>& fn) {
    Check c;
    c.name = name;
    try {
      fn();
      c.pass = false;
      c.detail = "no error was raised";
    } catch (const Error&) {
    }
    add(c);
  }
  std::string status(const std::string& op) const {
    auto it = status_.find(op);
    return it == status_.end() ? "" : (it->second ? "PASS" : "FAIL");
  }

 private:
  Report& report_;
  std::map<std::string, bool> status_;
};

// ---------------------------------------------------------------------------------------------
// Self-checks: GPU vs CPU on small inputs. Sizes are chosen to hit both the 16-byte pack path
// (widths that are multiples of 8) and the scalar fallback (odd widths).

void check_matmul(Checks& checks) {
  struct Case {
    std::string name;
    Shape a, b;
    bool trans_a, trans_b;
    DType ab, c;
    float alpha, beta;
  };
  const DType bf = DType::BF16, f32 = DType::F32;
  const std::vector<Case> cases = {
      {"NT bf16->bf16", {70, 96}, {40, 96}, false, true, bf, bf, 1.0f, 0.0f},
      {"NN bf16->f32 alpha 0.5 beta 1", {70, 96}, {96, 40}, false, false, bf, f32, 0.5f, 1.0f},
      {"TN bf16->f32 beta 1", {96, 70}, {96, 40}, true, false, bf, f32, 1.0f, 1.0f},
      {"TT bf16->bf16", {96, 70}, {40, 96}, true, true, bf, bf, 1.0f, 0.0f},
      {"batched A, shared B (folded rows)", {3, 70, 96}, {40, 96}, false, true, bf, bf, 1.0f, 0.0f},
      {"shared A, batched B (batch stride 0)", {70, 96}, {3, 96, 40}, false, false, bf, f32, 1.0f, 0.0f},
      {"batched TN beta 1", {3, 96, 70}, {3, 96, 40}, true, false, bf, f32, 1.0f, 1.0f},
      {"f32 NN", {70, 96}, {96, 40}, false, false, f32, f32, 1.0f, 0.0f},
      {"f32 in, bf16 out, beta 1", {70, 96}, {40, 96}, false, true, f32, bf, 1.0f, 1.0f},
      {"K = 33 (rows 2-byte aligned)", {70, 33}, {40, 33}, false, true, bf, bf, 1.0f, 0.0f},
  };
  uint64_t stream = 100;
  for (const Case& k : cases) {
    const int64_t M = k.trans_a ? k.a.back() : k.a[k.a.size() - 2];
    const int64_t N = k.trans_b ? k.b[k.b.size() - 2] : k.b.back();
    Shape c_shape = k.a.size() > 2 ? Shape{k.a[0], M, N} : (k.b.size() > 2 ? Shape{k.b[0], M, N} : Shape{M, N});
    const Tensor a = random(k.a, k.ab, stream++), b = random(k.b, k.ab, stream++);
    // beta == 0 must not read C: start from NaN there.
    Tensor c_cpu = k.beta != 0.0f ? random(c_shape, k.c, stream++) : Tensor::full(c_shape, NAN, k.c);
    Tensor c_gpu = c_cpu.to(kGpu);
    ops::matmul(a, b, c_cpu, k.trans_a, k.trans_b, k.alpha, k.beta);
    ops::matmul(a.to(kGpu), b.to(kGpu), c_gpu, k.trans_a, k.trans_b, k.alpha, k.beta);
    checks.compare("matmul: " + k.name, c_gpu, c_cpu);
  }
}

void check_linear(Checks& checks) {
  const Tensor x = random({70, 96}, DType::BF16, 200), w = random({40, 96}, DType::BF16, 201, 0.1f);
  const Tensor bias = random({40}, DType::BF16, 202), dy = random({70, 40}, DType::BF16, 203);
  Tensor y_cpu = Tensor::empty({70, 40}, DType::BF16), y_gpu = y_cpu.to(kGpu);
  ops::linear_forward(x, w, bias, y_cpu);
  ops::linear_forward(x.to(kGpu), w.to(kGpu), bias.to(kGpu), y_gpu);
  checks.compare("linear: forward with bias", y_gpu, y_cpu);
  Tensor dx_cpu = Tensor::empty({70, 96}, DType::BF16), dx_gpu = dx_cpu.to(kGpu);
  Tensor dw_cpu = random({40, 96}, DType::F32, 204), dw_gpu = dw_cpu.to(kGpu);
  Tensor db_cpu = random({40}, DType::F32, 205), db_gpu = db_cpu.to(kGpu);
  ops::linear_backward(dy, x, w, dx_cpu, dw_cpu, db_cpu, ops::GradWrite::Accumulate);
  ops::linear_backward(dy.to(kGpu), x.to(kGpu), w.to(kGpu), dx_gpu, dw_gpu, db_gpu, ops::GradWrite::Accumulate);
  checks.compare("linear: backward dx", dx_gpu, dx_cpu);
  checks.compare("linear: backward dw (accumulated)", dw_gpu, dw_cpu);
  checks.compare("linear: backward dbias (accumulated)", db_gpu, db_cpu);
}

void check_rmsnorm(Checks& checks) {
  struct Case {
    int64_t rows, cols;
    DType x, w;
  };
  const std::vector<Case> cases = {{37, 896, DType::BF16, DType::BF16},
                                   {5, 9000, DType::F32, DType::F32},
                                   {9, 100, DType::BF16, DType::F32}};
  uint64_t stream = 300;
  for (const Case& k : cases) {
    const std::string tag = fmt::format("[{}, {}] {} w {}", k.rows, k.cols, dtype_name(k.x), dtype_name(k.w));
    const Tensor x = random({k.rows, k.cols}, k.x, stream++), w = random({k.cols}, k.w, stream++);
    const Tensor dy = random({k.rows, k.cols}, k.x, stream++);
    Tensor y_cpu = Tensor::empty({k.rows, k.cols}, k.x), y_gpu = y_cpu.to(kGpu);
    Tensor r_cpu = Tensor::empty({k.rows}, DType::F32), r_gpu = r_cpu.to(kGpu);
    ops::rmsnorm_forward(x, w, kEps, y_cpu, r_cpu);
    const Tensor xg = x.to(kGpu), wg = w.to(kGpu);
    ops::rmsnorm_forward(xg, wg, kEps, y_gpu, r_gpu);
    checks.compare("rmsnorm_forward: y " + tag, y_gpu, y_cpu);
    checks.compare("rmsnorm_forward: rstd " + tag, r_gpu, r_cpu);
    Tensor dx_cpu = Tensor::empty({k.rows, k.cols}, k.x), dx_gpu = dx_cpu.to(kGpu);
    Tensor dw_cpu = random({k.cols}, DType::F32, stream++), dw_gpu = dw_cpu.to(kGpu);
    ops::rmsnorm_backward(dy, x, w, r_cpu, dx_cpu, dw_cpu, ops::GradWrite::Accumulate);
    ops::rmsnorm_backward(dy.to(kGpu), xg, wg, r_cpu.to(kGpu), dx_gpu, dw_gpu, ops::GradWrite::Accumulate);
    checks.compare("rmsnorm_backward: dx " + tag, dx_gpu, dx_cpu);
    checks.compare("rmsnorm_backward: dw " + tag, dw_gpu, dw_cpu);
  }
}

void check_rope(Checks& checks) {
  // q and k as head views of a fused QKV buffer (token stride (Hq + 2 Hk) * D), two documents.
  const int64_t T = 50, Hq = 4, Hk = 2, D = 64;
  std::vector<int64_t> pos;
  for (int64_t t = 0; t < T; ++t) pos.push_back(t < 30 ? t : t - 30);
  const Tensor positions = Tensor::from_ints(pos, {T}, DType::I32);
  const Tensor inv_freq = ops::rope_inv_freq(D, kRopeTheta);
  Tensor qkv_cpu = random({T, (Hq + 2 * Hk) * D}, DType::BF16, 400), qkv_gpu = qkv_cpu.to(kGpu);
  auto views = [&](Tensor& qkv) {
    return std::pair<Tensor, Tensor>{qkv.slice(1, 0, Hq * D).unflatten(1, {Hq, D}),
                                     qkv.slice(1, 0, (Hq + Hk) * D).unflatten(1, {Hq + Hk, D})};
  };
  auto [q_cpu, qk_cpu] = views(qkv_cpu);
  auto [q_gpu, qk_gpu] = views(qkv_gpu);
  const Tensor pg = positions.to(kGpu), fg = inv_freq.to(kGpu);
  ops::rope_forward(qk_cpu, positions, inv_freq);
  ops::rope_forward(qk_gpu, pg, fg);
  checks.compare("rope: forward q+k view of fused bf16 QKV (v untouched)", qkv_gpu, qkv_cpu);
  ops::rope_backward(q_cpu, positions, inv_freq);
  ops::rope_backward(q_gpu, pg, fg);
  checks.compare("rope: backward q view", qkv_gpu, qkv_cpu);

  struct Case {
    int64_t T, H, D;
    DType dtype;
  };
  for (const Case& k : {Case{20, 3, 128, DType::F32}, Case{7, 2, 10, DType::BF16}}) {
    const Tensor p = Tensor::from_ints(std::vector<int64_t>(size_t(k.T), 1000), {k.T}, DType::I32);
    const Tensor f = ops::rope_inv_freq(k.D, kRopeTheta);
    Tensor x_cpu = random({k.T, k.H, k.D}, k.dtype, 401), x_gpu = x_cpu.to(kGpu);
    ops::rope_forward(x_cpu, p, f);
    ops::rope_forward(x_gpu, p.to(kGpu), f.to(kGpu));
    checks.compare(fmt::format("rope: forward [{}, {}, {}] {} position 1000", k.T, k.H, k.D, dtype_name(k.dtype)), x_gpu,
                   x_cpu);
  }
}

void check_swiglu(Checks& checks) {
  struct Case {
    int64_t rows, width;
    DType dtype;
  };
  uint64_t stream = 500;
  for (const Case& k : {Case{33, 64, DType::BF16}, Case{5, 13, DType::F32}}) {
    const std::string tag = fmt::format("[{}, 2*{}] {}", k.rows, k.width, dtype_name(k.dtype));
    const Tensor gu = random({k.rows, 2 * k.width}, k.dtype, stream++, 2.0f), dh = random({k.rows, k.width}, k.dtype, stream++);
    Tensor h_cpu = Tensor::empty({k.rows, k.width}, k.dtype), h_gpu = h_cpu.to(kGpu);
    ops::swiglu_forward(gu, h_cpu);
    Tensor gu_gpu = gu.to(kGpu);
    ops::swiglu_forward(gu_gpu, h_gpu);
    checks.compare("swiglu_forward: " + tag, h_gpu, h_cpu);
    Tensor dgu_cpu = Tensor::empty(gu.shape(), k.dtype);
    ops::swiglu_backward(dh, gu, dgu_cpu);
    ops::swiglu_backward(dh.to(kGpu), gu_gpu, gu_gpu);  // in place on the GPU
    checks.compare("swiglu_backward: in place " + tag, gu_gpu, dgu_cpu);
  }
}

void check_embedding(Checks& checks) {
  struct Case {
    int64_t vocab, cols, tokens;
    DType dtype;
  };
  uint64_t stream = 600;
  for (const Case& k : {Case{1000, 96, 200, DType::BF16}, Case{50, 13, 30, DType::F32}}) {
    const std::string tag = fmt::format("V {} C {} N {} {}", k.vocab, k.cols, k.tokens, dtype_name(k.dtype));
    std::vector<int64_t> id_values;
    for (int64_t i = 0; i < k.tokens; ++i) id_values.push_back((i * 7919) % 53 * 17 % k.vocab);  // many repeats
    const Tensor ids = Tensor::from_ints(id_values, {k.tokens}, DType::I32), ids_gpu = ids.to(kGpu);
    const Tensor table = random({k.vocab, k.cols}, k.dtype, stream++);
    Tensor out_cpu = Tensor::empty({k.tokens, k.cols}, k.dtype), out_gpu = out_cpu.to(kGpu);
    ops::embedding_forward(ids, table, out_cpu);
    ops::embedding_forward(ids_gpu, table.to(kGpu), out_gpu);
    checks.compare("embedding_forward: exact, " + tag, out_gpu, out_cpu, 0, 0);
    // Both devices sum a row's tokens in token order from the same start: bitwise equal.
    const Tensor dout = random({k.tokens, k.cols}, k.dtype, stream++);
    Tensor dt_cpu = random({k.vocab, k.cols}, DType::F32, stream++), dt_gpu = dt_cpu.to(kGpu);
    ops::embedding_backward(dout, ids, dt_cpu);
    ops::embedding_backward(dout.to(kGpu), ids_gpu, dt_gpu);
    checks.compare("embedding_backward: bitwise, " + tag, dt_gpu, dt_cpu, 0, 0);
  }
  checks.rejects("embedding_forward: id outside the vocabulary is rejected", [] {
    const Tensor ids = Tensor::from_ints({3, 50, 1}, {3}, DType::I32, kGpu);
    const Tensor table = Tensor::zeros({50, 8}, DType::BF16, kGpu);
    Tensor out = Tensor::empty({3, 8}, DType::BF16, kGpu);
    ops::embedding_forward(ids, table, out);
  });
}

void check_elementwise(Checks& checks) {
  // fp32 arithmetic rounded once on both devices: exact.
  const Tensor a = random({33, 100}, DType::BF16, 700), b = random({33, 100}, DType::BF16, 701);
  Tensor out_cpu = Tensor::empty({33, 100}, DType::BF16), out_gpu = out_cpu.to(kGpu);
  ops::add(a, b, out_cpu);
  ops::add(a.to(kGpu), b.to(kGpu), out_gpu);
  checks.compare("add: bf16 + bf16 -> bf16", out_gpu, out_cpu, 0, 0);
  Tensor y_cpu = random({64, 128}, DType::BF16, 702), y_gpu = y_cpu.to(kGpu);
  const Tensor x = random({64, 128}, DType::BF16, 703);
  ops::add_(y_cpu, x);
  ops::add_(y_gpu, x.to(kGpu));
  checks.compare("add: in place y += x bf16", y_gpu, y_cpu, 0, 0);
  for (const Shape& shape : {Shape{64, 128}, Shape{1001}}) {
    Tensor s_cpu = random(shape, DType::F32, 704), s_gpu = s_cpu.to(kGpu);
    ops::scale_(s_cpu, 0.37f);
    ops::scale_(s_gpu, 0.37f);
    checks.compare("scale_: f32 " + shape_str(shape), s_gpu, s_cpu, 0, 0);
  }
}

void check_cast(Checks& checks) {
  // Conversions round to nearest even on both devices: exact. 4099 elements take the scalar path.
  const std::vector<std::pair<DType, DType>> pairs = {{DType::F32, DType::BF16}, {DType::BF16, DType::F32},
                                                      {DType::F32, DType::F16},  {DType::F16, DType::F32},
                                                      {DType::BF16, DType::F16}, {DType::F16, DType::BF16}};
  for (int64_t n : {int64_t(4096), int64_t(4099)}) {
    for (auto [from, to] : pairs) {
      const Tensor src = random({n}, from, 800, 3.0f);
      checks.compare(fmt::format("cast: {} -> {} [{}]", dtype_name(from), dtype_name(to), n), src.to(kGpu).to(to),
                     src.to(to), 0, 0);
    }
  }
}

void check_cross_entropy(Checks& checks) {
  const int64_t N = 33, V = 1000;
  std::vector<int64_t> label_values;
  for (int64_t i = 0; i < N; ++i) label_values.push_back(i % 5 == 0 ? ops::kIgnoreIndex : (i * 37) % V);
  const Tensor labels = Tensor::from_ints(label_values, {N}, DType::I32);
  const Tensor logits = random({N, V}, DType::BF16, 900, 3.0f);
  const float scale = 1.0f / 28;
  Tensor nll_cpu = Tensor::empty({N}, DType::F32), nll_gpu = nll_cpu.to(kGpu);
  Tensor d_cpu = Tensor::empty({N, V}, DType::BF16), l_gpu = logits.to(kGpu);
  ops::cross_entropy_forward_backward(logits, labels, scale, nll_cpu, d_cpu);
  ops::cross_entropy_forward_backward(l_gpu, labels.to(kGpu), scale, nll_gpu, l_gpu);  // in place
  checks.compare("cross_entropy: nll bf16 [33, 1000], ignored rows", nll_gpu, nll_cpu, 1e-5, 1e-5);
  checks.compare("cross_entropy: dlogits in place bf16 [33, 1000]", l_gpu, d_cpu);
  const Tensor l32 = random({7, 333}, DType::F32, 901, 5.0f);
  const Tensor lab32 = Tensor::from_ints({0, 332, ops::kIgnoreIndex, 17, 100, 5, 200}, {7}, DType::I32);
  Tensor n32_cpu = Tensor::empty({7}, DType::F32), n32_gpu = n32_cpu.to(kGpu);
  ops::cross_entropy_forward(l32, lab32, n32_cpu);
  ops::cross_entropy_forward(l32.to(kGpu), lab32.to(kGpu), n32_gpu);
  checks.compare("cross_entropy: forward only f32 [7, 333]", n32_gpu, n32_cpu, 1e-5, 1e-5);
  checks.rejects("cross_entropy: label outside the vocabulary is rejected", [] {
    const Tensor l = Tensor::zeros({2, 16}, DType::BF16, kGpu);
    const Tensor lab = Tensor::from_ints({3, 16}, {2}, DType::I32, kGpu);
    Tensor nll = Tensor::empty({2}, DType::F32, kGpu);
    ops::cross_entropy_forward(l, lab, nll);
  });
}

void check_optimizer(Checks& checks) {
  struct Case {
    int64_t n;
    DType grad;
    bool has_param;
    DType param;
  };
  const std::vector<Case> cases = {{1000, DType::F32, true, DType::BF16},
                                   {77, DType::BF16, false, DType::F32},
                                   {4096, DType::F32, true, DType::F32}};
  std::vector<ops::AdamWTensors> cpu, gpu;
  std::vector<Tensor> grads_cpu, grads_gpu;
  uint64_t stream = 1000;
  for (const Case& k : cases) {
    ops::AdamWTensors t;
    t.master = random({k.n}, DType::F32, stream++, 0.02f);
    t.m = random({k.n}, DType::F32, stream++, 1e-3f);
    t.v = Tensor::uniform({k.n}, 1, stream++, 0.0f, 1e-5f);
    t.grad = random({k.n}, k.grad, stream++, 1e-2f);
    if (k.has_param) t.param = Tensor::empty({k.n}, k.param);
    ops::AdamWTensors g{t.master.to(kGpu), t.m.to(kGpu), t.v.to(kGpu), t.grad.to(kGpu),
                        k.has_param ? t.param.to(kGpu) : Tensor()};
    grads_cpu.push_back(t.grad);
    grads_gpu.push_back(g.grad);
    cpu.push_back(t);
    gpu.push_back(g);
  }
  ops::AdamWConfig config;
  config.lr = 1e-3f;
  config.weight_decay = 0.1f;
  for (int64_t step = 1; step <= 2; ++step) {
    config.step = step;
    ops::adamw_step(cpu, config, 0.7f);
    ops::adamw_step(gpu, config, 0.7f);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string tag = fmt::format("tensor {} [{}] grad {}", i, cases[i].n, dtype_name(cases[i].grad));
    checks.compare("adamw: master " + tag, gpu[i].master, cpu[i].master, 1e-5, 1e-6);
    checks.compare("adamw: m " + tag, gpu[i].m, cpu[i].m, 1e-5, 1e-6);
    checks.compare("adamw: v " + tag, gpu[i].v, cpu[i].v, 1e-5, 1e-6);
    if (cases[i].has_param) checks.compare("adamw: param " + tag, gpu[i].param, cpu[i].param);
  }
  checks.scalar("global_grad_norm: mixed f32/bf16 list", ops::global_grad_norm(grads_gpu),
                ops::global_grad_norm(grads_cpu), 1e-5);
  Tensor with_nan = random({100}, DType::F32, stream++);
  with_nan.slice(0, 42, 43).fill_(NAN);
  Check nan_check;
  nan_check.name = "global_grad_norm: NaN propagates";
  const double nan_norm = ops::global_grad_norm({grads_gpu[0], with_nan.to(kGpu)});
  nan_check.pass = std::isnan(nan_norm);
  if (!nan_check.pass) nan_check.detail = fmt::format("got {}", nan_norm);
  checks.add(nan_check);
#ifdef LRSA_WITH_CUDA
  const Tensor values = random({100003}, DType::F32, stream++);
  double host_sum = 0;
  for (double v : values.to_doubles()) host_sum += v;
  checks.scalar("sum_to_host: f32 [100003]", cuda::sum_to_host(values.to(kGpu)), host_sum, 1e-4);
#endif
}

void check_lm_head(Checks& checks) {
  const int64_t N = 40, C = 64, V = 500;
  std::vector<int64_t> label_values;
  for (int64_t i = 0; i < N; ++i) label_values.push_back(i % 7 == 3 ? ops::kIgnoreIndex : (i * 101) % V);
  const Tensor labels = Tensor::from_ints(label_values, {N}, DType::I32);
  const Tensor h = random({N, C}, DType::BF16, 1100), w = random({V, C}, DType::BF16, 1101, 0.05f);
  Tensor dh_cpu = Tensor::zeros({N, C}, DType::BF16), dh_gpu = dh_cpu.to(kGpu);
  Tensor dw_cpu = Tensor::zeros({V, C}, DType::F32), dw_gpu = dw_cpu.to(kGpu);
  Tensor nll_cpu, nll_gpu;
  const float scale = 1.0f / 34;
  const ops::GradWrite write = ops::GradWrite::Overwrite;
  const ops::LmHeadLossResult r_cpu = ops::lm_head_loss(h, w, labels, scale, 16, dh_cpu, dw_cpu, write, nll_cpu);
  const ops::LmHeadLossResult r_gpu =
      ops::lm_head_loss(h.to(kGpu), w.to(kGpu), labels.to(kGpu), scale, 16, dh_gpu, dw_gpu, write, nll_gpu);
  checks.scalar("lm_head_loss: loss sum, chunks of 16 rows", r_gpu.loss_sum, r_cpu.loss_sum, 1e-4);
  checks.scalar("lm_head_loss: trained tokens", double(r_gpu.tokens), double(r_cpu.tokens), 0);
  checks.compare("lm_head_loss: dh", dh_gpu, dh_cpu, 2 * kBf16Rtol, 4 * kBf16Atol);
  checks.compare("lm_head_loss: dw", dw_gpu, dw_cpu, 2 * kBf16Rtol, 4 * kBf16Atol);
}

void run_checks(Checks& checks) {
  check_matmul(checks);
  check_linear(checks);
  check_rmsnorm(checks);
  check_rope(checks);
  check_swiglu(checks);
  check_embedding(checks);
  check_elementwise(checks);
  check_cast(checks);
  check_cross_entropy(checks);
  check_optimizer(checks);
  check_lm_head(checks);
}

// ---------------------------------------------------------------------------------------------
// Timing

class Bench {
 public:
  Bench(Report& report, const Checks& checks, const OpsOptions& options)
      : report_(report), checks_(checks), options_(options) {}

  // Times fn (and the reference, when given) and reports the row; row.check names the op whose
  // self-check status goes into the row; `note` (optional) writes the row's note from the time.
  // Returns fn's median milliseconds.
  double run(Row row, const std::function<void()>& fn, const std::function<void()>& reference = nullptr,
             const std::function<std::string(double)>& note = nullptr) {
    row.family = "ops";
    row.dtype = row.dtype.empty() ? "bf16" : row.dtype;
    row.check = checks_.status(row.check);
    row.ms = time_ms(fn, options_.common);
    if (reference) row.ref_ms = time_ms(reference, options_.common);
    if (note) row.note = note(row.ms);
    report_.add(row);
    return row.ms;
  }

  // y = x @ W^T, dx = dy @ W, dW += dy^T @ x for a linear layer [in -> out], each against cuBLAS.
  void linear_gemms(const ModelShape& m, int64_t T, const std::string& name, int64_t in, int64_t out) {
    const Tensor x = random({T, in}, DType::BF16, 1, 1.0f, kGpu), w = random({out, in}, DType::BF16, 2, 0.02f, kGpu);
    const Tensor dy = random({T, out}, DType::BF16, 3, 1.0f, kGpu);
    Tensor y = Tensor::empty({T, out}, DType::BF16, kGpu), dx = Tensor::empty({T, in}, DType::BF16, kGpu);
    Tensor dw = Tensor::zeros({out, in}, DType::F32, kGpu);
    const double flops = 2.0 * double(T) * double(in) * double(out);
    auto row = [&](const std::string& pass, const std::string& shape, const std::string& dtype) {
      Row r;
      r.op = "matmul " + name + " " + pass;
      r.config = m.name;
      r.tokens = T;
      r.shape = shape;
      r.dtype = dtype;
      r.flops = flops;
      r.formula = "2*M*N*K";
      r.ref_name = "cuBLAS";
      r.min_ratio = kMinGemmRatio;
      r.check = "matmul";
      return r;
    };
    run(row("fwd", fmt::format("[{},{}]x[{},{}]^T", T, in, out, in), "bf16"), [&] { ops::matmul(x, w, y, false, true); },
        [&] { cublas_gemm(x, w, y, false, true, 0.0f); });
    run(row("dx", fmt::format("[{},{}]x[{},{}]", T, out, out, in), "bf16"), [&] { ops::matmul(dy, w, dx); },
        [&] { cublas_gemm(dy, w, dx, false, false, 0.0f); });
    run(row("dW", fmt::format("[{},{}]^Tx[{},{}]", T, out, T, in), "bf16>f32"),
        [&] { ops::matmul(dy, x, dw, true, false, 1.0f, 1.0f); }, [&] { cublas_gemm(dy, x, dw, true, false, 1.0f); });
  }

  void model_ops(const ModelShape& m, int64_t T) {
    const int64_t C = m.hidden, Hq = m.heads, Hk = m.kv_heads, D = m.head_dim, F = m.mlp;
    const int64_t qkv = (Hq + 2 * Hk) * D;
    linear_gemms(m, T, "qkv", C, qkv);
    linear_gemms(m, T, "o", Hq * D, C);
    linear_gemms(m, T, "gate_up", C, 2 * F);
    linear_gemms(m, T, "down", F, C);

    const double tc = double(T) * double(C);
    auto row = [&](const std::string& op, const std::string& shape, double bytes, const std::string& formula,
                   const std::string& check) {
      Row r;
      r.op = op;
      r.config = m.name;
      r.tokens = T;
      r.shape = shape;
      r.bytes = bytes;
      r.formula = formula;
      r.check = check;
      return r;
    };
    const std::string tc_shape = fmt::format("[{},{}]", T, C);
    {
      const Tensor x = random({T, C}, DType::BF16, 10, 1.0f, kGpu), w = random({C}, DType::BF16, 11, 1.0f, kGpu);
      const Tensor dy = random({T, C}, DType::BF16, 12, 1.0f, kGpu);
      Tensor y = Tensor::empty({T, C}, DType::BF16, kGpu), rstd = Tensor::empty({T}, DType::F32, kGpu);
      Tensor dx = Tensor::empty({T, C}, DType::BF16, kGpu), dw = Tensor::zeros({C}, DType::F32, kGpu);
      run(row("rmsnorm fwd", tc_shape, 4 * tc + 2.0 * C + 4.0 * T, "2*T*C*2 (x, y) + 2*C + 4*T (rstd)", "rmsnorm_forward"),
          [&] { ops::rmsnorm_forward(x, w, kEps, y, rstd); });
      run(row("rmsnorm bwd", tc_shape, 6 * tc + 2.0 * C + 4.0 * T, "3*T*C*2 (dy, x, dx) + 2*C + 4*T", "rmsnorm_backward"),
          [&] { ops::rmsnorm_backward(dy, x, w, rstd, dx, dw, ops::GradWrite::Overwrite); });
      // As the decoder calls it: the residual stream's gradient added into dx.
      const Tensor residual = random({T, C}, DType::BF16, 13, 1.0f, kGpu);
      run(row("rmsnorm bwd+res", tc_shape, 8 * tc + 2.0 * C + 4.0 * T, "4*T*C*2 (dy, x, residual, dx) + 2*C + 4*T",
              "rmsnorm_backward"),
          [&] { ops::rmsnorm_backward(dy, x, w, rstd, dx, dw, ops::GradWrite::Overwrite, residual); });
    }
    {
      Tensor buffer = random({T, qkv}, DType::BF16, 20, 1.0f, kGpu);
      Tensor qk = buffer.slice(1, 0, (Hq + Hk) * D).unflatten(1, {Hq + Hk, D});  // as the decoder rotates them
      std::vector<int64_t> pos(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = t % 4096;  // documents of 4K tokens
      const Tensor positions = Tensor::from_ints(pos, {T}, DType::I32, kGpu);
      const Tensor inv_freq = ops::rope_inv_freq(D, kRopeTheta).to(kGpu);
      const double bytes = 2.0 * 2.0 * double(T) * double((Hq + Hk) * D) + 2 * 4.0 * T;
      const std::string shape = fmt::format("q[{},{},{}] k[{},{},{}]", T, Hq, D, T, Hk, D);
      const std::string formula = "2*T*(Hq+Hk)*D*2 (q, k read + write) + 2*4*T (positions)";
      run(row("rope fwd (q+k)", shape, bytes, formula, "rope"), [&] { ops::rope_forward(qk, positions, inv_freq); });
      run(row("rope bwd (q+k)", shape, bytes, formula, "rope"), [&] { ops::rope_backward(qk, positions, inv_freq); });
    }
    {
      const double tf = double(T) * double(F);
      const Tensor gu = random({T, 2 * F}, DType::BF16, 30, 1.0f, kGpu), dh = random({T, F}, DType::BF16, 31, 1.0f, kGpu);
      Tensor h = Tensor::empty({T, F}, DType::BF16, kGpu), dgu = Tensor::empty({T, 2 * F}, DType::BF16, kGpu);
      const std::string shape = fmt::format("[{},2*{}]", T, F);
      run(row("swiglu fwd", shape, 6 * tf, "3*T*F*2 (gate, up, h)", "swiglu_forward"), [&] { ops::swiglu_forward(gu, h); });
      run(row("swiglu bwd", shape, 10 * tf, "5*T*F*2 (dh, gate, up, dgate, dup)", "swiglu_backward"),
          [&] { ops::swiglu_backward(dh, gu, dgu); });
    }
    {
      Tensor y = random({T, C}, DType::BF16, 40, 1.0f, kGpu);
      const Tensor x = random({T, C}, DType::BF16, 41, 1.0f, kGpu);
      run(row("add_ (y += x)", tc_shape, 6 * tc, "3*T*C*2 (y, x read; y write)", "add"), [&] { ops::add_(y, x); });
      run(row("scale_", tc_shape, 4 * tc, "2*T*C*2", "scale_"), [&] { ops::scale_(y, 1.0f); });
      Tensor f32 = random({T, C}, DType::F32, 42, 1.0f, kGpu);
      Row cast_down = row("cast f32->bf16", tc_shape, 6 * tc, "T*C*(4+2)", "cast");
      cast_down.dtype = "f32>bf16";
      run(cast_down, [&] { y.copy_(f32); });
      Row cast_up = row("cast bf16->f32", tc_shape, 6 * tc, "T*C*(4+2)", "cast");
      cast_up.dtype = "bf16>f32";
      run(cast_up, [&] { f32.copy_(y); });
    }
    {
      const Tensor table = random({kVocab, C}, DType::BF16, 50, 1.0f, kGpu);
      const Tensor ids = Tensor::uniform({T}, 51, 0, 0.0f, float(kVocab), DType::F32, kGpu).to(DType::I32);
      const Tensor dout = random({T, C}, DType::BF16, 52, 1.0f, kGpu);
      Tensor out = Tensor::empty({T, C}, DType::BF16, kGpu), dtable = Tensor::zeros({kVocab, C}, DType::F32, kGpu);
      run(row("embedding fwd", fmt::format("V {} x [{},{}]", kVocab, T, C), 4 * tc + 4.0 * T,
              "2*T*C*2 (gathered rows, out) + 4*T (ids)", "embedding_forward"),
          [&] { ops::embedding_forward(ids, table, out); });
      Row bwd = row("embedding bwd", fmt::format("V {} x [{},{}]", kVocab, T, C), 2 * tc + 8 * tc + 4.0 * T,
                    "T*C*2 (dout) + 2*T*C*4 (f32 table row read + write per token) + 4*T", "embedding_backward");
      bwd.dtype = "bf16>f32";
      bwd.note = "deterministic: radix sort + per-row sums; includes the id range check's host sync";
      run(bwd, [&] { ops::embedding_backward(dout, ids, dtable); });
    }
  }

  // Fused softmax/CE forward + backward in place on [T, V] bf16 logits.
  void cross_entropy(const std::string& config, int64_t T) {
    Tensor logits = random({T, kVocab}, DType::BF16, 60, 2.0f, kGpu);
    const Tensor labels = random_labels(T);
    Tensor nll = Tensor::empty({T}, DType::F32, kGpu);
    Row r;
    r.op = "cross_entropy fwd+bwd";
    r.config = config;
    r.tokens = T;
    r.shape = fmt::format("[{},{}]", T, kVocab);
    r.bytes = 3.0 * 2.0 * double(T) * double(kVocab) + 8.0 * T;
    r.formula = "3*T*V*2 (logits read twice, dlogits written in place) + 8*T (labels, nll)";
    r.check = "cross_entropy";
    r.note = "includes the label range check's host sync";
    run(r, [&] { ops::cross_entropy_forward_backward(logits, labels, 1.0f / float(T), nll, logits); });
  }

  // AdamW and the gradient norm over the parameters of one decoder layer.
  void optimizer(const ModelShape& m) {
    const int64_t C = m.hidden, Hq = m.heads, Hk = m.kv_heads, D = m.head_dim, F = m.mlp;
    const std::vector<Shape> shapes = {{Hq * D, C}, {Hk * D, C}, {Hk * D, C}, {Hq * D}, {Hk * D}, {Hk * D}, {C, Hq * D},
                                       {F, C},      {F, C},      {C, F},      {C},      {C}};
    std::vector<ops::AdamWTensors> tensors;
    std::vector<Tensor> grads;
    int64_t params = 0;
    uint64_t stream = 70;
    for (const Shape& s : shapes) {
      ops::AdamWTensors t{random(s, DType::F32, stream++, 0.02f, kGpu), Tensor::zeros(s, DType::F32, kGpu),
                          Tensor::zeros(s, DType::F32, kGpu), random(s, DType::F32, stream++, 1e-3f, kGpu),
                          Tensor::empty(s, DType::BF16, kGpu)};
      params += shape_numel(s);
      grads.push_back(t.grad);
      tensors.push_back(t);
    }
    ops::AdamWConfig config;
    Row r;
    r.op = "adamw (one layer)";
    r.config = m.name;
    r.shape = fmt::format("{} tensors, {} params", shapes.size(), params);
    r.dtype = "f32>bf16";
    r.bytes = 30.0 * double(params);
    r.formula = "30 B/param: grad f32 read, master/m/v f32 read + write, bf16 param write";
    r.check = "adamw";
    r.note = "includes the slot-table upload (a host sync)";
    run(r, [&] { ops::adamw_step(tensors, config, 1.0f); });
    Row n;
    n.op = "global_grad_norm (layer)";
    n.config = m.name;
    n.shape = r.shape;
    n.dtype = "f32";
    n.bytes = 4.0 * double(params);
    n.formula = "4 B/param (f32 grad read)";
    n.check = "global_grad_norm";
    n.note = "includes the result read-back (a host sync)";
    run(n, [&] { ops::global_grad_norm(grads); });
  }

  // The lm_head loss at T tokens: the three lm_head GEMMs and the softmax/CE, timed apart, then
  // the chunked ops::lm_head_loss end to end.
  void lm_head(const ModelShape& m) {
    const int64_t T = options_.lm_head_tokens, C = m.hidden, V = kVocab;
    const Tensor h = random({T, C}, DType::BF16, 80, 1.0f, kGpu), w = random({V, C}, DType::BF16, 81, 0.02f, kGpu);
    const Tensor labels = random_labels(T);
    Tensor logits = Tensor::empty({T, V}, DType::BF16, kGpu), dh = Tensor::empty({T, C}, DType::BF16, kGpu);
    Tensor dw = Tensor::zeros({V, C}, DType::F32, kGpu), nll = Tensor::empty({T}, DType::F32, kGpu);
    const double flops = 2.0 * double(T) * double(V) * double(C);
    auto gemm_row = [&](const std::string& op, const std::string& dtype) {
      Row r;
      r.op = op;
      r.config = m.name;
      r.tokens = T;
      r.shape = fmt::format("[{},{}] V {}", T, C, V);
      r.dtype = dtype;
      r.flops = flops;
      r.formula = "2*T*V*C";
      r.ref_name = "cuBLAS";
      r.min_ratio = kMinGemmRatio;
      r.check = "matmul";
      return r;
    };
    double gemm_ms = run(gemm_row("lm_head logits", "bf16"), [&] { ops::matmul(h, w, logits, false, true); },
                         [&] { cublas_gemm(h, w, logits, false, true, 0.0f); });
    gemm_ms += run(gemm_row("lm_head dh", "bf16"), [&] { ops::matmul(logits, w, dh); },
                   [&] { cublas_gemm(logits, w, dh, false, false, 0.0f); });
    gemm_ms += run(gemm_row("lm_head dW", "bf16>f32"), [&] { ops::matmul(logits, h, dw, true, false, 1.0f, 1.0f); },
                   [&] { cublas_gemm(logits, h, dw, true, false, 1.0f); });
    Row ce;
    ce.op = "lm_head softmax/CE";
    ce.config = m.name;
    ce.tokens = T;
    ce.shape = fmt::format("[{},{}]", T, V);
    ce.bytes = 3.0 * 2.0 * double(T) * double(V) + 8.0 * T;
    ce.formula = "3*T*V*2 (logits read twice, dlogits written in place) + 8*T (labels, nll)";
    ce.check = "cross_entropy";
    run(ce, [&] { ops::cross_entropy_forward_backward(logits, labels, 1.0f / float(T), nll, logits); }, nullptr,
        [&](double ms) { return fmt::format("CE / (3 lm_head GEMMs) = {:.3f} ({:.3f} ms vs {:.3f} ms)", ms / gemm_ms, ms, gemm_ms); });
    Row total;
    total.op = "lm_head_loss (chunked)";
    total.config = m.name;
    total.tokens = T;
    total.shape = fmt::format("[{},{}] V {} chunk {}", T, C, V, options_.lm_head_chunk);
    total.flops = 3.0 * flops;
    total.formula = "3*2*T*V*C (the three GEMMs; CE work not counted)";
    total.check = "lm_head_loss";
    run(total, [&] {
          ops::lm_head_loss(h, w, labels, 1.0f / float(T), options_.lm_head_chunk, dh, dw, ops::GradWrite::Overwrite,
                            nll);
        }, nullptr,
        [&](double ms) { return fmt::format("GEMMs alone {:.3f} ms = {:.1f}% of the total", gemm_ms, 100.0 * gemm_ms / ms); });
  }

 private:
  Tensor random_labels(int64_t T) {
    // Uniform labels, about 5% ignored (set where a second uniform draw falls below 0.05).
    const Tensor u = Tensor::uniform({T}, 90, 0, 0.0f, float(kVocab), DType::F32, kCpu);
    const Tensor keep = Tensor::uniform({T}, 90, 1, 0.0f, 1.0f, DType::F32, kCpu);
    std::vector<int64_t> values(static_cast<size_t>(T));
    const std::vector<float> uv = u.to_floats(), kv = keep.to_floats();
    for (size_t i = 0; i < values.size(); ++i) values[i] = kv[i] < 0.05f ? ops::kIgnoreIndex : int64_t(uv[i]);
    return Tensor::from_ints(values, {T}, DType::I32, kGpu);
  }

  Report& report_;
  const Checks& checks_;
  const OpsOptions& options_;
};

int run_ops(const OpsOptions& options) {
  if (!require_gpu("lrsa-bench ops")) return 2;
  std::vector<ModelShape> models;
  for (const std::string& name : options.models) {
    auto it = std::find_if(kModels.begin(), kModels.end(), [&](const ModelShape& m) { return m.name == name; });
    LRSA_CHECK(it != kModels.end(), "lrsa-bench ops: unknown model '{}' (expected 0.5B, 1.5B or 7B)", name);
    models.push_back(*it);
  }
  ops::set_gemm_candidates(options.gemm_candidates);
  const Ceilings ceilings = measure_ceilings(options.common);
  Report report("ops", options.common, ceilings);
  const int candidates = ops::gemm_candidates();  // LRSA_GEMM_CANDIDATES may override the option
  fmt::print("ops::matmul algorithm: {}\n", candidates == 1 ? std::string("cuBLASLt's first heuristic choice")
                                                          : fmt::format("the fastest of {} timed", candidates));
  Checks checks(report);
  if (!options.skip_checks) run_checks(checks);
  Bench bench(report, checks, options);
  for (int64_t T : options.tokens) bench.cross_entropy("-", T);
  for (const ModelShape& m : models) {
    for (int64_t T : options.tokens) bench.model_ops(m, T);
    bench.optimizer(m);
    bench.lm_head(m);
  }
  return report.finish();
}

}  // namespace

Subcommand register_ops(CLI::App& app) {
  auto options = std::make_shared<OpsOptions>();
  CLI::App* sub = app.add_subcommand("ops", "runtime ops (GEMMs, norms, RoPE, SwiGLU, embedding, CE, AdamW) vs ceilings");
  add_common_options(sub, options->common);
  sub->add_option("--models", options->models, "models among 0.5B, 1.5B, 7B");
  sub->add_option("--tokens", options->tokens, "token counts T");
  sub->add_option("--lm-head-tokens", options->lm_head_tokens, "tokens of the lm_head loss benchmark");
  sub->add_option("--lm-head-chunk", options->lm_head_chunk, "chunk_rows of the chunked lm_head_loss");
  sub->add_option("--gemm-candidates", options->gemm_candidates,
                  "cuBLASLt algorithms timed per GEMM shape (1: its first heuristic choice; default: as training)")
      ->check(CLI::Range(1, ops::kMaxGemmCandidates));
  sub->add_flag("--skip-checks", options->skip_checks, "skip the GPU-vs-CPU self-checks");
  return {sub, [options] { return run_ops(*options); }};
}

}  // namespace lrsa::bench
