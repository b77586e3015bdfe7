#pragma once
// AdamW over the decoder's flat parameter arena: fp32 master weights and moments for a shard
// [begin, end) of the flat buffer (the whole buffer without ZeRO-1), the learning-rate schedule,
// global-norm clipping folded into the update, and the non-finite guard.
#include <cstdint>

#include "lrsa/model/decoder.h"
#include "lrsa/ops/optimizer.h"
#include "lrsa/train/config.h"

namespace lrsa::train {

// Learning rate at a 1-based optimizer step: linear warmup to optim.lr, then cosine or linear
// decay to min_lr_ratio * lr at schedule.max_steps (constant when max_steps is unbounded).
double learning_rate(const OptimConfig& optim, const ScheduleConfig& schedule, int64_t step);

struct StepStats {
  double grad_norm = 0;   // before clipping
  double lr = 0;
  bool skipped = false;   // non-finite gradient: parameters and moments left unchanged
};

class Optimizer {
 public:
  // shard_begin/end: the elements of the flat buffer this rank updates (ZeRO-1), default all.
  Optimizer(model::Decoder& model, const OptimConfig& optim, int64_t shard_begin = 0, int64_t shard_end = -1);

  // One update from the gradients in model.grads(); grad_norm is the global norm (reduced across
  // ranks by the caller when data parallel). Weight decay applies to matrices and embeddings,
  // not to norms and biases (as the Hugging Face Trainer does).
  StepStats step(double lr, double grad_norm);

  int64_t steps_taken() const { return steps_; }
  // State for checkpoints: f32 [shard] each; the step count restores bias correction.
  Tensor& master() { return master_; }
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  void set_steps_taken(int64_t steps) { steps_ = steps; }
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }

 private:
  model::Decoder& model_;
  OptimConfig optim_;
  int64_t begin_, end_, steps_ = 0;
  Tensor master_, m_, v_;
  // Per parameter tensor (intersected with the shard): views of master/m/v/grad/param and
  // whether weight decay applies.
  std::vector<ops::AdamWTensors> decayed_, not_decayed_;
};

}  // namespace lrsa::train
