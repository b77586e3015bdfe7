#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "lrsa/ops/cross_entropy.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

struct CeOut {
  std::vector<double> nll, dlogits;
};

// Two-pass softmax cross-entropy in Acc (double: reference; float: straightforward
// implementation). dlogits = grad_scale * (softmax - onehot), zero rows for ignored labels.
template <typename Acc>
CeOut ce_ref(const std::vector<double>& logits, const std::vector<int64_t>& labels, int64_t V, double grad_scale) {
  const int64_t N = int64_t(labels.size());
  CeOut out{std::vector<double>(size_t(N), 0.0), std::vector<double>(size_t(N * V), 0.0)};
  for (int64_t n = 0; n < N; ++n) {
    const int64_t label = labels[size_t(n)];
    if (label == ops::kIgnoreIndex) continue;
    const double* row = logits.data() + n * V;
    Acc m = Acc(row[0]), s = 0;
    for (int64_t v = 1; v < V; ++v) m = std::max(m, Acc(row[v]));
    for (int64_t v = 0; v < V; ++v) s += std::exp(Acc(row[v]) - m);
    const Acc lse = m + std::log(s);
    out.nll[size_t(n)] = double(lse - Acc(row[label]));
    for (int64_t v = 0; v < V; ++v)
      out.dlogits[size_t(n * V + v)] = double(Acc(grad_scale) * (std::exp(Acc(row[v]) - lse) - Acc(v == label ? 1 : 0)));
  }
  return out;
}

// Labels: every third row ignored, the others spread over the vocabulary including both ends.
std::vector<int64_t> make_labels(int64_t N, int64_t V) {
  std::vector<int64_t> labels;
  for (int64_t n = 0; n < N; ++n)
    labels.push_back(n % 3 == 2 ? ops::kIgnoreIndex : n % 3 == 0 ? (n * 131) % V : V - 1 - (n % V));
  return labels;
}

// QA labels: a few answer spans among N rows, the rest ignored (lm_head_loss's compact block).
std::vector<int64_t> answer_labels(int64_t N, int64_t V, const std::vector<std::pair<int64_t, int64_t>>& spans) {
  std::vector<int64_t> labels(size_t(N), ops::kIgnoreIndex);
  for (const auto& [begin, end] : spans)
    for (int64_t n = begin; n < end; ++n) labels[size_t(n)] = (n * 37) % V;
  return labels;
}

CeOut run_ce(const Tensor& logits, const std::vector<int64_t>& labels, float grad_scale, Device device) {
  const int64_t N = logits.size(0);
  Tensor nll = Tensor::empty({N}, DType::F32, device), dlogits = Tensor::empty(logits.shape(), logits.dtype(), device);
  ops::cross_entropy_forward_backward(logits.to(device), Tensor::from_ints(labels, {N}, DType::I32, device), grad_scale,
                                      nll, dlogits);
  return {nll.to_doubles(), dlogits.to_doubles()};
}

// The lm_head pipeline of the contract in Acc: logits = h @ W^T, cross-entropy, dh = dlogits @ W,
// dw = dlogits^T @ h. With round_bf16 the logits, dlogits and dh are rounded like bf16 storage.
struct LmOut {
  double loss_sum = 0;
  std::vector<double> nll, dh, dw;
};

template <typename Acc>
LmOut lm_ref(const std::vector<double>& h, const std::vector<double>& w, const std::vector<int64_t>& labels, int64_t C,
             int64_t V, double grad_scale, bool bf16_storage) {
  const int64_t N = int64_t(labels.size());
  const auto store = [&](Acc v) { return bf16_storage ? double(round_bf16(float(v))) : double(v); };
  std::vector<double> logits(size_t(N * V));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) {
      Acc s = 0;
      for (int64_t c = 0; c < C; ++c) s += Acc(h[size_t(n * C + c)]) * Acc(w[size_t(v * C + c)]);
      logits[size_t(n * V + v)] = store(s);
    }
  CeOut ce = ce_ref<Acc>(logits, labels, V, grad_scale);
  for (double& d : ce.dlogits) d = store(Acc(d));
  LmOut out{0, ce.nll, std::vector<double>(size_t(N * C)), std::vector<double>(size_t(V * C))};
  for (double l : ce.nll) out.loss_sum += l;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      Acc s = 0;
      for (int64_t v = 0; v < V; ++v) s += Acc(ce.dlogits[size_t(n * V + v)]) * Acc(w[size_t(v * C + c)]);
      out.dh[size_t(n * C + c)] = store(s);
    }
  for (int64_t v = 0; v < V; ++v)
    for (int64_t c = 0; c < C; ++c) {
      Acc s = 0;
      for (int64_t n = 0; n < N; ++n) s += Acc(ce.dlogits[size_t(n * V + v)]) * Acc(h[size_t(n * C + c)]);
      out.dw[size_t(v * C + c)] = double(s);
    }
  return out;
}

struct LmRun {
  ops::LmHeadLossResult result;
  std::vector<double> nll, dh, dw;
};

LmRun run_lm(const Tensor& h, const Tensor& w, const std::vector<int64_t>& labels, float grad_scale, int64_t chunk_rows,
             Device device) {
  const int64_t N = h.size(0);
  // dw is overwritten, as in a step's first micro-batch: from NaN, which must not be read.
  Tensor dh = Tensor::empty(h.shape(), h.dtype(), device);
  Tensor dw = Tensor::full(w.shape(), std::numeric_limits<double>::quiet_NaN(), DType::F32, device);
  Tensor nll = Tensor::empty({N}, DType::F32, device);
  const auto result = ops::lm_head_loss(h.to(device), w.to(device), Tensor::from_ints(labels, {N}, DType::I32, device),
                                        grad_scale, chunk_rows, dh, dw, ops::GradWrite::Overwrite, nll);
  return {result, nll.to_doubles(), dh.to_doubles(), dw.to_doubles()};
}

}  // namespace

TEST_CASE("cross-entropy f32 matches fp64 across vocabulary chunks, with ignored rows", "[ops]") {
  const int64_t shapes[][2] = {{1, 1}, {4, 7}, {3, 2048}, {6, 5000}, {5, 4097}};
  const float grad_scale = 0.37f;
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    for (float scale : {1.0f, 40.0f}) {  // 40: logits spread over ~200, exp underflows for most of the row
      const int64_t N = s[0], V = s[1];
      CAPTURE(N, V, scale);
      const Tensor logits = randn({N, V}, seed++, DType::F32, scale);
      const auto labels = make_labels(N, V);
      const CeOut ours = run_ce(logits, labels, grad_scale, Device::cpu());
      const CeOut ref = ce_ref<double>(logits.to_doubles(), labels, V, grad_scale);
      const CeOut base = ce_ref<float>(logits.to_doubles(), labels, V, grad_scale);
      check_close(ours.nll, ref.nll, 2e-6);
      check_rule(ours.nll, base.nll, ref.nll, 1e-6);
      // f32 logits of size ~100 carry absolute errors ~1e-5 into exp(): the rule, not a fixed bound.
      check_rule(ours.dlogits, base.dlogits, ref.dlogits, 1e-7);

      Tensor nll = Tensor::empty({N}, DType::F32);  // forward only gives the same nll
      ops::cross_entropy_forward(logits, Tensor::from_ints(labels, {N}), nll);
      CHECK(nll.to_doubles() == ours.nll);

      Tensor inplace = logits.clone();  // dlogits aliasing logits
      ops::cross_entropy_forward_backward(inplace, Tensor::from_ints(labels, {N}), grad_scale, nll, inplace);
      CHECK(inplace.to_doubles() == ours.dlogits);
    }
  }
}

TEST_CASE("cross-entropy gradient matches finite differences of grad_scale * sum(nll)", "[ops]") {
  const int64_t N = 4, V = 9;
  const double grad_scale = 0.5;
  const Tensor logits = randn({N, V}, 7, DType::F32, 2.0f);
  const auto labels = make_labels(N, V);
  const CeOut ours = run_ce(logits, labels, float(grad_scale), Device::cpu());
  const auto fd = finite_diff(
      [&](const std::vector<double>& l) {
        double sum = 0;
        for (double v : ce_ref<double>(l, labels, V, 1.0).nll) sum += v;
        return grad_scale * sum;
      },
      logits.to_doubles());
  check_close(ours.dlogits, fd, 1e-6);
}

TEST_CASE("cross-entropy bf16 follows the tolerance rule", "[ops]") {
  const int64_t N = 8, V = 3000;
  const Tensor logits = randn({N, V}, 9, DType::BF16, 3.0f);
  const auto labels = make_labels(N, V);
  const CeOut ours = run_ce(logits, labels, 0.25f, Device::cpu());
  const CeOut ref = ce_ref<double>(logits.to_doubles(), labels, V, 0.25);
  const CeOut base = ce_ref<float>(logits.to_doubles(), labels, V, 0.25);
  check_rule(ours.nll, base.nll, ref.nll);
  check_rule(ours.dlogits, round_to(base.dlogits, DType::BF16), ref.dlogits, 1e-7);
}

TEST_CASE("lm_head_loss matches the fp64 pipeline for every chunking; evaluation mode agrees", "[ops]") {
  const int64_t N = 13, C = 24, V = 300;
  const float grad_scale = 1.0f / 9;
  const Tensor h = randn({N, C}, 1), w = randn({V, C}, 2, DType::F32, 0.3f);
  const auto labels = make_labels(N, V);
  const LmOut ref = lm_ref<double>(h.to_doubles(), w.to_doubles(), labels, C, V, grad_scale, false);
  for (int64_t chunk : {1, 4, 13, 50}) {
    CAPTURE(chunk);
    const LmRun r = run_lm(h, w, labels, grad_scale, chunk, Device::cpu());
    CHECK(r.result.tokens == 9);
    CHECK(std::abs(r.result.loss_sum - ref.loss_sum) <= 1e-5 * ref.loss_sum);
    check_close(r.nll, ref.nll, 2e-6);
    check_close(r.dh, ref.dh, 1e-6);
    check_close(r.dw, ref.dw, 1e-6);
  }
  // Evaluation: no gradients, no nll_out. Then dw alone: overwritten by a first call, added to by
  // a second.
  Tensor none;
  const auto eval = ops::lm_head_loss(h, w, Tensor::from_ints(labels, {N}), grad_scale, 5, none, none,
                                      ops::GradWrite::Overwrite, none);
  CHECK(std::abs(eval.loss_sum - ref.loss_sum) <= 1e-5 * ref.loss_sum);
  CHECK(eval.tokens == 9);
  Tensor dw = randn({V, C}, 3), nll = Tensor::empty({N}, DType::F32);
  for (ops::GradWrite write : {ops::GradWrite::Overwrite, ops::GradWrite::Accumulate})
    ops::lm_head_loss(h, w, Tensor::from_ints(labels, {N}), grad_scale, 6, none, dw, write, nll);
  auto twice = ref.dw;
  for (double& v : twice) v *= 2;
  check_close(dw.to_doubles(), twice, 1e-6);
}

TEST_CASE("lm_head_loss over few labelled rows (the compact block) matches the fp64 pipeline", "[ops]") {
  const int64_t N = 700, C = 12, V = 64;
  const Tensor h = randn({N, C}, 5), w = randn({V, C}, 6, DType::F32, 0.3f);
  // 255 labelled rows fill a 256-row block (its last row the zero row), 256 need 512 rows, 0 and
  // the lone last row test the ends; 600 labelled rows would need 768 > N rows: the full pipeline.
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> cases = {
      {{100, 110}, {400, 403}, {699, 700}}, {{0, 255}}, {{300, 556}}, {}, {{50, 650}}};
  for (const auto& spans : cases) {
    const auto labels = answer_labels(N, V, spans);
    const LmOut ref = lm_ref<double>(h.to_doubles(), w.to_doubles(), labels, C, V, 0.5, false);
    for (int64_t chunk : {7, 4096}) {
      CAPTURE(spans.size(), chunk);
      const LmRun r = run_lm(h, w, labels, 0.5f, chunk, Device::cpu());
      int64_t labelled = 0;
      for (int64_t label : labels) labelled += label != ops::kIgnoreIndex;
      CHECK(r.result.tokens == labelled);
      CHECK(std::abs(r.result.loss_sum - ref.loss_sum) <= 1e-5 * ref.loss_sum);
      check_close(r.nll, ref.nll, 2e-6);
      check_close(r.dh, ref.dh, 1e-6);
      check_close(r.dw, ref.dw, 1e-6);
      for (int64_t n = 0; n < N; ++n)  // ignored rows: exactly no loss and no gradient
        if (labels[size_t(n)] == ops::kIgnoreIndex) {
          CHECK(r.nll[size_t(n)] == 0.0);
          for (int64_t c = 0; c < C; ++c) CHECK(r.dh[size_t(n * C + c)] == 0.0);
        }
    }
  }
}

TEST_CASE("lm_head_loss bf16 follows the tolerance rule", "[ops]") {
  const int64_t N = 10, C = 32, V = 500;
  const Tensor h = randn({N, C}, 3, DType::BF16), w = randn({V, C}, 4, DType::BF16, 0.3f);
  const auto labels = make_labels(N, V);
  const auto hv = h.to_doubles(), wv = w.to_doubles();
  const LmOut ref = lm_ref<double>(hv, wv, labels, C, V, 0.1, false);
  const LmOut base = lm_ref<float>(hv, wv, labels, C, V, 0.1, true);
  const LmRun r = run_lm(h, w, labels, 0.1f, 4, Device::cpu());
  check_rule(r.nll, base.nll, ref.nll);
  check_rule(r.dh, base.dh, ref.dh, 1e-6);
  check_rule(r.dw, base.dw, ref.dw, 1e-6);
}

TEST_CASE("cross-entropy and lm_head_loss reject bad arguments with clear errors", "[ops]") {
  const Tensor logits = randn({3, 5}, 1);
  Tensor nll = Tensor::empty({3}, DType::F32), d = Tensor::empty({3, 5}, DType::F32);
  CHECK_THROWS_WITH(ops::cross_entropy_forward_backward(logits, Tensor::from_ints({0, 5, 1}, {3}), 1.0f, nll, d),
                    Catch::Contains("cross_entropy_forward_backward: labels[1] = 5 is neither the ignore index -100 nor in [0, 5)"));
  CHECK_THROWS_WITH(ops::cross_entropy_forward(logits, Tensor::from_ints({0, 1, 1}, {3}, DType::I64), nll),
                    Catch::Contains("cross_entropy_forward: labels must be i32, got i64[3]"));
  Tensor d_bf16 = Tensor::empty({3, 5}, DType::BF16);
  CHECK_THROWS_WITH(ops::cross_entropy_forward_backward(logits, Tensor::from_ints({0, 1, 1}, {3}), 1.0f, nll, d_bf16),
                    Catch::Contains("dlogits must be f32, got bf16[3, 5]"));
  Tensor nll_bad = Tensor::empty({4}, DType::F32);
  CHECK_THROWS_WITH(ops::cross_entropy_forward(logits, Tensor::from_ints({0, 1, 1}, {3}), nll_bad),
                    Catch::Contains("nll must have shape [3], got f32[4]"));
  Tensor none;
  const Tensor h = randn({3, 4}, 2), labels = Tensor::from_ints({0, 1, 2}, {3});
  const ops::GradWrite add = ops::GradWrite::Accumulate;
  CHECK_THROWS_WITH(ops::lm_head_loss(h, randn({6, 5}, 3), labels, 1.0f, 2, none, none, add, none),
                    Catch::Contains("lm_head_loss: w must be [V, 4] to match h f32[3, 4] cpu, got f32[6, 5]"));
  CHECK_THROWS_WITH(ops::lm_head_loss(h, randn({6, 4}, 3), labels, 1.0f, 0, none, none, add, none),
                    Catch::Contains("lm_head_loss: chunk_rows must be positive, got 0"));
  Tensor dw_bf16 = Tensor::zeros({6, 4}, DType::BF16);
  CHECK_THROWS_WITH(ops::lm_head_loss(h, randn({6, 4}, 3), labels, 1.0f, 2, none, dw_bf16, add, none),
                    Catch::Contains("lm_head_loss: dw must be f32, got bf16[6, 4]"));
  // A bad label among few labelled rows is named by its row of h, not of the compact block.
  auto qa_labels = answer_labels(700, 6, {{10, 12}});
  qa_labels[500] = 6;
  CHECK_THROWS_WITH(ops::lm_head_loss(randn({700, 4}, 4), randn({6, 4}, 3), Tensor::from_ints(qa_labels, {700}), 1.0f,
                                      64, none, none, add, none),
                    Catch::Contains("lm_head_loss: labels[500] = 6 is neither the ignore index -100 nor in [0, 6)"));
}

TEST_CASE("cross-entropy and lm_head_loss on CUDA match the CPU within the tolerance rule", "[ops][cuda]") {
  const Device gpu = Device::cuda(0);
  for (DType dtype : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dtype));
    const int64_t N = 21, V = 9001;
    const Tensor logits = randn({N, V}, 20, dtype, 4.0f);
    const auto labels = make_labels(N, V);
    const CeOut g = run_ce(logits, labels, 0.3f, gpu), c = run_ce(logits, labels, 0.3f, Device::cpu());
    const CeOut ref = ce_ref<double>(logits.to_doubles(), labels, V, 0.3);
    check_rule(g.nll, c.nll, ref.nll);
    check_rule(g.dlogits, c.dlogits, ref.dlogits, 1e-7);

    const int64_t Nh = 19, C = 64, Vh = 1000;
    const Tensor h = randn({Nh, C}, 21, dtype), w = randn({Vh, C}, 22, dtype, 0.3f);
    const auto lm_labels = make_labels(Nh, Vh);
    const LmOut lref = lm_ref<double>(h.to_doubles(), w.to_doubles(), lm_labels, C, Vh, 0.1, false);
    const LmRun lg = run_lm(h, w, lm_labels, 0.1f, 8, gpu), lc = run_lm(h, w, lm_labels, 0.1f, 8, Device::cpu());
    CHECK(lg.result.tokens == lc.result.tokens);
    CHECK(std::abs(lg.result.loss_sum - lref.loss_sum) <= 2 * std::abs(lc.result.loss_sum - lref.loss_sum) + 1e-4);
    check_rule(lg.nll, lc.nll, lref.nll);
    check_rule(lg.dh, lc.dh, lref.dh, 1e-6);
    check_rule(lg.dw, lc.dw, lref.dw, 1e-6);

    // QA labels: the compact block of labelled rows, gathered and scattered on the device.
    const int64_t Na = 600;
    const Tensor ha = randn({Na, C}, 23, dtype);
    const auto qa_labels = answer_labels(Na, Vh, {{10, 20}, {300, 330}, {599, 600}});
    const LmOut qref = lm_ref<double>(ha.to_doubles(), w.to_doubles(), qa_labels, C, Vh, 0.1, false);
    const LmRun qg = run_lm(ha, w, qa_labels, 0.1f, 8, gpu), qc = run_lm(ha, w, qa_labels, 0.1f, 8, Device::cpu());
    CHECK(qg.result.tokens == 41);
    CHECK(std::abs(qg.result.loss_sum - qref.loss_sum) <= 2 * std::abs(qc.result.loss_sum - qref.loss_sum) + 1e-4);
    check_rule(qg.nll, qc.nll, qref.nll);
    check_rule(qg.dh, qc.dh, qref.dh, 1e-6);
    check_rule(qg.dw, qc.dw, qref.dw, 1e-6);
  }
}
