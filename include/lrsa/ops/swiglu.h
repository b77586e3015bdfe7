#pragma once
// SwiGLU on the fused gate/up projection: gate_up [N, 2F] holds gate in columns [0, F) and up in
// [F, 2F); h [N, F] = silu(gate) * up. Computed in fp32, stored in the input dtype.
#include "lrsa/core/tensor.h"

namespace lrsa::ops {

void swiglu_forward(const Tensor& gate_up, Tensor& h);

// dgate_up [N, 2F] is overwritten (may alias gate_up: each element is read before it is written).
void swiglu_backward(const Tensor& dh, const Tensor& gate_up, Tensor& dgate_up);

}  // namespace lrsa::ops
