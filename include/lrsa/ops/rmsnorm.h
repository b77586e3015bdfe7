#pragma once
// RMSNorm over the last dimension: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y [N, C] (f32 or bf16, same dtype), w [C] (x's dtype or f32), rstd [N] f32 (saved for backward).
// Statistics and the product are computed in fp32; y is rounded once.
#include "lrsa/core/tensor.h"
#include "lrsa/ops/grad_write.h"

namespace lrsa::ops {

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);

// dx [N, C] (x's dtype) is overwritten; dw [C] f32 is written as dw_write says. With `residual`
// [N, C] (x's dtype; may alias dx) dx = the norm's gradient + residual, rounded once: a pre-norm
// residual block's input gradient without a separate add.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw,
                      GradWrite dw_write, const Tensor& residual = Tensor());

}  // namespace lrsa::ops
