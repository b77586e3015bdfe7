#pragma once
// Rotary position embedding, Hugging Face "rotate half" convention, applied in place:
//   x [T, H, D] (f32 or bf16), positions [T] i32 (explicit, so packed documents restart at 0),
//   inv_freq [D/2] f32, angle(t, i) = float(positions[t]) * inv_freq[i] computed in fp32,
//   out[..., i]       = x[..., i] * cos - x[..., i + D/2] * sin
//   out[..., i + D/2] = x[..., i + D/2] * cos + x[..., i] * sin
// x may be a view whose last two dimensions are contiguous ([T, H, D] slice of a fused QKV
// buffer: stride(0) may exceed H*D).
#include "lrsa/core/tensor.h"

namespace lrsa::ops {

// inv_freq[i] = theta^(-2i/D) in fp32, as transformers computes it (default rope type).
Tensor rope_inv_freq(int64_t head_dim, double theta);

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);

// The rotation is orthogonal: the gradient is dx rotated by -angle, in place.
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq);

}  // namespace lrsa::ops
