#pragma once
// Token embedding: out [N, C] = table [V, C][ids [N]] (ids i32, checked to lie in [0, V)).
#include "lrsa/core/tensor.h"

namespace lrsa::ops {

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);

// dtable [V, C] (f32) += scatter of dout [N, C] by ids. Deterministic on every device (rows are
// summed in token order).
void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable);

}  // namespace lrsa::ops
