#include "lrsa/train/optimizer.h"

#include <cmath>
#include <numbers>

namespace lrsa::train {

double learning_rate(const OptimConfig& optim, const ScheduleConfig& schedule, int64_t step) {
  if (schedule.warmup_steps > 0 && step <= schedule.warmup_steps) return optim.lr * double(step) / double(schedule.warmup_steps);
  if (schedule.max_steps <= 0 || schedule.decay == Decay::Constant) return optim.lr;
  const double span = double(std::max<int64_t>(schedule.max_steps - schedule.warmup_steps, 1));
  const double progress = std::clamp(double(step - schedule.warmup_steps) / span, 0.0, 1.0);
  const double floor = optim.lr * schedule.min_lr_ratio;
  const double shape = schedule.decay == Decay::Cosine ? 0.5 * (1.0 + std::cos(std::numbers::pi * progress)) : 1.0 - progress;
  return floor + (optim.lr - floor) * shape;
}

Optimizer::Optimizer(model::Decoder& model, const OptimConfig& optim, int64_t shard_begin, int64_t shard_end)
    : model_(model), optim_(optim), begin_(shard_begin) {
  const Tensor& flat = model.params().flat;
  end_ = shard_end < 0 ? flat.numel() : shard_end;
  LRSA_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= flat.numel(), "optimizer: shard [{}, {}) outside {} parameters",
             begin_, end_, flat.numel());
  const Device device = flat.device();
  master_ = flat.slice(0, begin_, end_).to(DType::F32).clone();
  m_ = Tensor::zeros({end_ - begin_}, DType::F32, device);
  v_ = Tensor::zeros({end_ - begin_}, DType::F32, device);

  for (const model::ParamEntry& e : model::parameter_layout(model.config())) {
    const int64_t lo = std::max(e.offset, begin_), hi = std::min(e.offset + shape_numel(e.shape), end_);
    if (lo >= hi) continue;
    ops::AdamWTensors t{master_.slice(0, lo - begin_, hi - begin_), m_.slice(0, lo - begin_, hi - begin_),
                        v_.slice(0, lo - begin_, hi - begin_), model.grads().flat.slice(0, lo, hi),
                        flat.slice(0, lo, hi)};
    const bool no_decay = e.name.ends_with("norm") || e.name.ends_with("_b");
    (no_decay ? not_decayed_ : decayed_).push_back(t);
  }
}

StepStats Optimizer::step(double lr, double grad_norm) {
  StepStats stats{grad_norm, lr, false};
  if (!std::isfinite(grad_norm)) {
    stats.skipped = true;
    return stats;
  }
  ++steps_;
  const float scale = ops::clip_scale(grad_norm, optim_.grad_clip);
  ops::AdamWConfig config{float(lr), float(optim_.beta1), float(optim_.beta2), float(optim_.eps),
                          float(optim_.weight_decay), steps_};
  if (!decayed_.empty()) ops::adamw_step(decayed_, config, scale);
  config.weight_decay = 0.0f;
  if (!not_decayed_.empty()) ops::adamw_step(not_decayed_, config, scale);
  return stats;
}

}  // namespace lrsa::train
