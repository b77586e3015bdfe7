#pragma once
// RMSNorm over the last dimension: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y [N, C] (f32 or bf16, same dtype), w [C] (x's dtype or f32), rstd [N] f32 (saved for backward).
// Statistics and the product are computed in fp32; y is rounded once.
#include "lrsa/core/tensor.h"

namespace lrsa::ops {

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);

// dx [N, C] (x's dtype) is overwritten; dw [C] f32 is accumulated (+=).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw);

}  // namespace lrsa::ops
