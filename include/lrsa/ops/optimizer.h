#pragma once
// AdamW with fp32 master weights and moments, global gradient norm and clipping.
#include <vector>

#include "lrsa/core/tensor.h"

namespace lrsa::ops {

struct AdamWConfig {
  float lr = 1e-5f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: master -= lr * wd * master
  int64_t step = 1;           // 1-based, for bias correction
};

// One parameter's state. master, m, v: f32; grad: f32 or bf16; param: the working copy (bf16
// or f32) rewritten from master after the update, or undefined. All the same shape and device.
struct AdamWTensors {
  Tensor master, m, v, grad, param;
};

// Updates every tensor in one pass (one launch per dtype group on CUDA). Each gradient is
// multiplied by grad_scale first (clipping folds in here: scale = min(1, max_norm / norm)).
void adamw_step(const std::vector<AdamWTensors>& tensors, const AdamWConfig& config, float grad_scale);

// sqrt(sum of squares) over all gradients, accumulated in fp64 on CPU / fp32 per block on CUDA.
// NaN or Inf in any gradient gives a non-finite result.
double global_grad_norm(const std::vector<Tensor>& grads);

// The clip factor for a norm: min(1, max_norm / norm); 1 when max_norm <= 0 (no clipping).
float clip_scale(double norm, double max_norm);

}  // namespace lrsa::ops
