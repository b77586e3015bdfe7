#pragma once
// Softmax cross-entropy with an ignore index, and the chunked lm_head loss built on it.
#include "lrsa/core/tensor.h"
#include "lrsa/ops/grad_write.h"

namespace lrsa::ops {

constexpr int32_t kIgnoreIndex = -100;

// logits [N, V] (f32 or bf16), labels [N] i32. For every row: nll[n] = logsumexp(logits[n]) -
// logits[n, label] in fp32 (0 when label == ignore), and dlogits[n] = grad_scale *
// (softmax(logits[n]) - onehot(label)) (0 for ignored rows). The row is processed in vocabulary
// chunks with an online max/sum, so no fp32 copy of the logits is made. dlogits may alias logits.
void cross_entropy_forward_backward(const Tensor& logits, const Tensor& labels, float grad_scale, Tensor& nll,
                                    Tensor& dlogits);

// Forward only (evaluation): nll [N] f32.
void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& nll);

struct LmHeadLossResult {
  double loss_sum = 0;   // sum of nll over trained tokens
  int64_t tokens = 0;    // labels != ignore
};

// Final projection + cross-entropy, chunked over tokens so that at most chunk_rows x V logits
// exist at once (in h's dtype): for each chunk, logits = h_chunk @ W^T, then the fused
// cross-entropy above, then dh_chunk = dlogits @ W and dW += dlogits^T @ h_chunk.
// h [N, C], w [V, C], labels [N] i32. dh [N, C] overwritten, dw [V, C] f32 written as dw_write
// says (Overwrite: set to the sum over the chunks); pass undefined dh/dw for evaluation.
// nll_out [N] f32 (optional) receives every row's nll.
// Rows whose label is ignore have no loss and no gradient (dh row 0). In QA fine-tuning (loss on
// the answers) they are most rows, so when few rows carry a label the pipeline runs on a compact
// block of those rows only (gathered from h; dh and nll_out scattered back), a multiple of 256 rows
// so that the GEMMs meet few shapes (each timed once, ops::gemm_candidates); the result is the
// same up to the order of dw's sums.
LmHeadLossResult lm_head_loss(const Tensor& h, const Tensor& w, const Tensor& labels, float grad_scale,
                              int64_t chunk_rows, Tensor& dh, Tensor& dw, GradWrite dw_write, Tensor& nll_out);

}  // namespace lrsa::ops
