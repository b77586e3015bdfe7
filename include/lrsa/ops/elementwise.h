#pragma once
// Small elementwise ops: the residual add and scaling. Same shape and device; fp32 arithmetic.
#include "lrsa/core/tensor.h"

namespace lrsa::ops {

// y += x (the residual connection; its backward passes the gradient through unchanged).
void add_(Tensor& y, const Tensor& x);

// out = a + b. Each operand may be a row-strided view (dimension 0 strided, the rest contiguous:
// a slice of a fused buffer), as row_layout describes; out may alias a or b.
void add(const Tensor& a, const Tensor& b, Tensor& out);

// x *= s
void scale_(Tensor& x, float s);

}  // namespace lrsa::ops
