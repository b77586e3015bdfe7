#include "lrsa/ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lrsa/core/dispatch.h"
#include "lrsa/ops/embedding.h"
#include "lrsa/ops/matmul.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

void check_label(const char* op, int64_t n, int64_t label, int64_t V) {
  LRSA_CHECK(label == kIgnoreIndex || (label >= 0 && label < V),
             "{}: labels[{}] = {} is neither the ignore index {} nor in [0, {})", op, n, label, kIgnoreIndex, V);
}

void check_cross_entropy(const char* op, const Tensor& logits, const Tensor& labels, const Tensor& nll) {
  check_tensor(logits, op, "logits", {DType::F32, DType::BF16});
  LRSA_CHECK(logits.dim() == 2, "{}: logits must be [N, V], got {}", op, logits.describe());
  check_tensor(labels, op, "labels", {DType::I32});
  check_shape(labels, op, "labels", {logits.size(0)});
  check_tensor(nll, op, "nll", {DType::F32});
  check_shape(nll, op, "nll", {logits.size(0)});
  check_same_device(op, {&logits, &labels, &nll});
  if (!labels.device().is_cpu()) return;  // the CUDA kernels check the range on the device
  const int32_t* p = labels.data_as<int32_t>();
  const int64_t V = logits.size(1);
  for (int64_t n = 0; n < labels.numel(); ++n) check_label(op, n, p[n], V);
}

// Per row: pass 1 walks the vocabulary in chunks keeping a running max m and sum s of exp(l - m)
// (rescaled when the max grows), so each chunk is read while it is in cache and no fp32 copy of
// the row exists; pass 2 writes the gradient. dlogits (may be null) may alias logits: the target
// logit is read in pass 1 and pass 2 reads each element before writing it.
template <typename T>
void cross_entropy_cpu(const T* logits, const int32_t* labels, float grad_scale, float* nll, T* dlogits, int64_t N,
                       int64_t V) {
  constexpr int64_t kChunk = 2048;
#pragma omp parallel for schedule(dynamic) if (N * V > cpu::kParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = logits + n * V;
    T* drow = dlogits == nullptr ? nullptr : dlogits + n * V;
    const int32_t label = labels[n];
    if (label == kIgnoreIndex) {
      nll[n] = 0.0f;
      if (drow != nullptr)
        for (int64_t v = 0; v < V; ++v) cpu::store(drow, v, 0.0f);
      continue;
    }
    float m = -std::numeric_limits<float>::infinity(), s = 0.0f;
    for (int64_t v0 = 0; v0 < V; v0 += kChunk) {
      const int64_t v1 = std::min(V, v0 + kChunk);
      float chunk_max = m;
      for (int64_t v = v0; v < v1; ++v) chunk_max = std::max(chunk_max, cpu::load(row, v));
      s *= std::exp(m - chunk_max);  // exp(-inf) = 0 on the first chunk
      m = chunk_max;
      for (int64_t v = v0; v < v1; ++v) s += std::exp(cpu::load(row, v) - m);
    }
    const float lse = m + std::log(s);
    const float target = cpu::load(row, label);
    nll[n] = lse - target;
    if (drow == nullptr) continue;
    for (int64_t v = 0; v < V; ++v) cpu::store(drow, v, grad_scale * std::exp(cpu::load(row, v) - lse));
    cpu::store(drow, label, grad_scale * (std::exp(target - lse) - 1.0f));
  }
}

void cross_entropy_dispatch(const Tensor& logits, const Tensor& labels, float grad_scale, Tensor& nll,
                            Tensor* dlogits) {
  LRSA_DISPATCH_CUDA(logits.device(), "cross_entropy", cuda::cross_entropy(logits, labels, grad_scale, nll, dlogits));
  cpu::visit_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_cpu(logits.data_as<T>(), labels.data_as<int32_t>(), grad_scale, nll.data_as<float>(),
                      dlogits == nullptr ? nullptr : dlogits->data_as<T>(), logits.size(0), logits.size(1));
  });
}

}  // namespace

void cross_entropy_forward_backward(const Tensor& logits, const Tensor& labels, float grad_scale, Tensor& nll,
                                    Tensor& dlogits) {
  check_cross_entropy("cross_entropy_forward_backward", logits, labels, nll);
  check_tensor(dlogits, "cross_entropy_forward_backward", "dlogits", {logits.dtype()});
  check_shape(dlogits, "cross_entropy_forward_backward", "dlogits", logits.shape());
  check_same_device("cross_entropy_forward_backward", {&logits, &dlogits});
  cross_entropy_dispatch(logits, labels, grad_scale, nll, &dlogits);
}

void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& nll) {
  check_cross_entropy("cross_entropy_forward", logits, labels, nll);
  cross_entropy_dispatch(logits, labels, 1.0f, nll, nullptr);
}

namespace {

// The compact block of labelled rows is a multiple of this many rows (lm_head_loss).
constexpr int64_t kCompactRowQuantum = 256;

// The chunked pipeline over every row of h (checked by lm_head_loss). nll [N] receives every row's nll.
void lm_head_loss_rows(const Tensor& h, const Tensor& w, const Tensor& labels, float grad_scale, int64_t chunk_rows,
                       Tensor& dh, Tensor& dw, GradWrite dw_write, Tensor& nll) {
  const int64_t N = h.size(0), V = w.size(0);
  const bool backward = dh.defined() || dw.defined();
  Tensor logits_buffer = Tensor::empty({std::min(chunk_rows, N), V}, h.dtype(), h.device());
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t r1 = std::min(N, r0 + chunk_rows);
    const Tensor h_chunk = h.slice(0, r0, r1), labels_chunk = labels.slice(0, r0, r1);
    Tensor logits = logits_buffer.slice(0, 0, r1 - r0);  // [rows, V]
    Tensor nll_chunk = nll.slice(0, r0, r1);
    matmul(h_chunk, w, logits, false, true);
    if (!backward) {
      cross_entropy_forward(logits, labels_chunk, nll_chunk);
      continue;
    }
    cross_entropy_forward_backward(logits, labels_chunk, grad_scale, nll_chunk, logits);  // logits <- dlogits
    if (dh.defined()) {
      Tensor dh_chunk = dh.slice(0, r0, r1);
      matmul(logits, w, dh_chunk);  // [rows, V] @ [V, C]
    }
    if (dw.defined()) {  // [V, rows] @ [rows, C]; the first chunk overwrites when asked to
      const bool overwrite = r0 == 0 && dw_write == GradWrite::Overwrite;
      matmul(logits, h_chunk, dw, true, false, 1.0f, overwrite ? 0.0f : 1.0f);
    }
  }
  if (N == 0 && dw.defined() && dw_write == GradWrite::Overwrite) dw.zero_();  // an empty sum
}

}  // namespace

// Device-generic: built from matmul, the fused cross-entropy and the embedding's row gather, so it
// runs wherever they do.
LmHeadLossResult lm_head_loss(const Tensor& h, const Tensor& w, const Tensor& labels, float grad_scale,
                              int64_t chunk_rows, Tensor& dh, Tensor& dw, GradWrite dw_write, Tensor& nll_out) {
  constexpr const char* op = "lm_head_loss";
  check_tensor(h, op, "h", {DType::F32, DType::BF16});
  LRSA_CHECK(h.dim() == 2, "{}: h must be [N, C], got {}", op, h.describe());
  const int64_t N = h.size(0), C = h.size(1);
  check_tensor(w, op, "w", {h.dtype()});
  LRSA_CHECK(w.dim() == 2 && w.size(1) == C, "{}: w must be [V, {}] to match h {}, got {}", op, C, h.describe(),
             w.describe());
  check_tensor(labels, op, "labels", {DType::I32});
  check_shape(labels, op, "labels", {N});
  LRSA_CHECK(chunk_rows > 0, "{}: chunk_rows must be positive, got {}", op, chunk_rows);
  if (dh.defined()) {
    check_tensor(dh, op, "dh", {h.dtype()});
    check_shape(dh, op, "dh", h.shape());
  }
  if (dw.defined()) {
    check_tensor(dw, op, "dw", {DType::F32});
    check_shape(dw, op, "dw", w.shape());
  }
  if (nll_out.defined()) {
    check_tensor(nll_out, op, "nll_out", {DType::F32});
    check_shape(nll_out, op, "nll_out", {N});
  }
  check_same_device(op, {&h, &w, &labels, &dh, &dw, &nll_out});

  const Device device = h.device();
  const std::vector<int64_t> host_labels = labels.to_ints();
  std::vector<int64_t> labelled;  // rows with a label, in order
  for (int64_t n = 0; n < N; ++n) {
    const int64_t label = host_labels[size_t(n)];
    check_label(op, n, label, w.size(0));
    if (label != kIgnoreIndex) labelled.push_back(n);
  }
  const int64_t M = int64_t(labelled.size());
  LmHeadLossResult result;
  result.tokens = M;
  // The compact block: M + 1 rows at least (its first padding row is the zero row that the
  // ignored rows read back), rounded up so that the GEMM shapes stay few.
  const int64_t compact = (M + kCompactRowQuantum) / kCompactRowQuantum * kCompactRowQuantum;
  Tensor summed;  // the nll of every row that has one
  if (compact >= N) {
    summed = nll_out.defined() ? nll_out : Tensor::empty({N}, DType::F32, device);
    lm_head_loss_rows(h, w, labels, grad_scale, chunk_rows, dh, dw, dw_write, summed);
  } else {
    // Rows [0, M) of the block are the labelled rows, the padding rows copies of row 0 with no
    // label; `back` maps each row of h to its block row, an ignored one to the padding row M.
    std::vector<int64_t> gather = labelled, block_labels, back(size_t(N), M);
    gather.resize(size_t(compact), 0);
    for (int64_t i = 0; i < M; ++i) {
      block_labels.push_back(host_labels[size_t(labelled[size_t(i)])]);
      back[size_t(labelled[size_t(i)])] = i;
    }
    block_labels.resize(size_t(compact), kIgnoreIndex);
    const Tensor back_ids = Tensor::from_ints(back, {N}, DType::I32, device);
    Tensor h_block = Tensor::empty({compact, C}, h.dtype(), device);
    embedding_forward(Tensor::from_ints(gather, {compact}, DType::I32, device), h, h_block);
    Tensor dh_block = dh.defined() ? Tensor::empty({compact, C}, h.dtype(), device) : Tensor();
    Tensor nll_block = Tensor::empty({compact}, DType::F32, device);
    lm_head_loss_rows(h_block, w, Tensor::from_ints(block_labels, {compact}, DType::I32, device), grad_scale,
                      chunk_rows, dh_block, dw, dw_write, nll_block);
    if (dh.defined()) embedding_forward(back_ids, dh_block, dh);
    if (nll_out.defined()) {
      Tensor nll_column = nll_out.view({N, 1});
      embedding_forward(back_ids, nll_block.view({compact, 1}), nll_column);
    }
    summed = nll_block;
  }
  for (double v : summed.to_doubles()) result.loss_sum += v;  // one read-back
  return result;
}

}  // namespace lrsa::ops
