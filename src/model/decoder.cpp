#include "lrsa/model/decoder.h"

#include "lrsa/ops/cross_entropy.h"
#include "lrsa/ops/elementwise.h"
#include "lrsa/ops/embedding.h"
#include "lrsa/ops/matmul.h"
#include "lrsa/ops/rmsnorm.h"
#include "lrsa/ops/rope.h"
#include "lrsa/ops/swiglu.h"

namespace lrsa::model {

// ---------------------------------------------------------------------------------------------
// Batches

TokenBatch TokenBatch::from_host(const std::vector<int32_t>& input_ids, const std::vector<int32_t>& labels,
                                 const std::vector<int64_t>& cu_seqlens, Device device,
                                 const std::vector<int32_t>& positions) {
  const int64_t T = int64_t(input_ids.size());
  LRSA_CHECK(int64_t(labels.size()) == T, "TokenBatch: {} labels for {} input ids", labels.size(), T);
  LRSA_CHECK(positions.empty() || int64_t(positions.size()) == T, "TokenBatch: {} positions for {} input ids",
             positions.size(), T);
  TokenBatch batch;
  batch.layout.cu_seqlens = cu_seqlens;
  batch.layout.validate("TokenBatch", T, Device::cpu());
  std::vector<int64_t> targets(static_cast<size_t>(T), ops::kIgnoreIndex), pos(static_cast<size_t>(T));
  for (size_t d = 0; d + 1 < cu_seqlens.size(); ++d) {
    for (int64_t t = cu_seqlens[d]; t < cu_seqlens[d + 1]; ++t) {
      pos[size_t(t)] = positions.empty() ? t - cu_seqlens[d] : positions[size_t(t)];
      if (t + 1 < cu_seqlens[d + 1]) targets[size_t(t)] = labels[size_t(t + 1)];
    }
  }
  for (int64_t t : targets) batch.trained_tokens += t != ops::kIgnoreIndex;
  batch.ids = Tensor::from_ints(std::vector<int64_t>(input_ids.begin(), input_ids.end()), {T}, DType::I32, device);
  batch.targets = Tensor::from_ints(targets, {T}, DType::I32, device);
  batch.positions = Tensor::from_ints(pos, {T}, DType::I32, device);
  if (device.is_cuda())
    batch.layout.cu_seqlens_device = Tensor::from_ints(cu_seqlens, {int64_t(cu_seqlens.size())}, DType::I32, device);
  return batch;
}

// ---------------------------------------------------------------------------------------------
// Decoder

// What one layer keeps for its backward pass (only x_in for a checkpointed layer until its
// activations are recomputed).
struct Decoder::LayerActs {
  Tensor x_in;            // [T, C] residual stream entering the layer
  Tensor norm1, rstd1;    // [T, C], [T] f32
  Tensor qkv;             // [T, Hq*D + 2*Hk*D], q and k after RoPE
  attn::AttentionForward attn;  // out [T, Hq, D], lse, selection
  Tensor x_mid;           // [T, C] residual after attention
  Tensor norm2, rstd2;    // [T, C], [T] f32
  Tensor gate_up;         // [T, 2F]
  Tensor h;               // [T, F]

  void drop_all_but_input() {
    Tensor keep = x_in;
    *this = LayerActs{};
    x_in = keep;
  }
};

Decoder::Decoder(const ModelConfig& config, const DecoderOptions& options, DType param_dtype, Device device)
    : config_(config), options_(options), device_(device) {
  validate_model_config(config_, "decoder");
  LRSA_CHECK(param_dtype == DType::BF16 || param_dtype == DType::F32, "decoder: parameters must be bf16 or f32, got {}",
             dtype_name(param_dtype));
  if (options_.attention.mode == attn::Mode::Lrsa) options_.attention.lrsa.validate();
  const double gather_gib = options_.attention.cudnn_gather_gib;
  LRSA_CHECK(gather_gib > 0 && gather_gib <= attn::kMaxCudnnGatherGib,
             "attention.cudnn_gather_gib: must be in (0, {}], got {}", attn::kMaxCudnnGatherGib, gather_gib);
  params_ = make_param_set(config_, param_dtype, device_);
  grads_ = make_param_set(config_, DType::F32, device_);
  inv_freq_ = rope_inv_freq(config_).to(device_);
}

Tensor Decoder::embed(const Tensor& ids) {
  Tensor x = Tensor::empty({ids.size(0), config_.hidden_size}, params_.flat.dtype(), device_);
  embed(ids, x);
  return x;
}

void Decoder::embed(const Tensor& ids, Tensor& x) { ops::embedding_forward(ids, params_.embed, x); }

QkvViews split_qkv(const Tensor& qkv, const ModelConfig& c) {
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), D = c.head_dim;
  return {qkv.slice(1, 0, qd).unflatten(1, {-1, D}), qkv.slice(1, qd, qd + kvd).unflatten(1, {-1, D}),
          qkv.slice(1, qd + kvd, qd + 2 * kvd).unflatten(1, {-1, D}), qkv.slice(1, 0, qd + kvd).unflatten(1, {-1, D})};
}

// The layer up to attention's inputs: norm1, fused q/k/v projection, RoPE on q and k.
void Decoder::layer_attention_input(size_t l, const Tensor& x_in, const Tensor& positions, LayerActs& a) {
  const LayerParams& p = params_.layers[l];
  const ModelConfig& c = config_;
  const int64_t T = x_in.size(0), C = c.hidden_size;
  const DType dt = x_in.dtype();
  a.x_in = x_in;
  a.norm1 = Tensor::empty({T, C}, dt, device_);
  a.rstd1 = Tensor::empty({T}, DType::F32, device_);
  ops::rmsnorm_forward(x_in, p.input_norm, float(c.rms_norm_eps), a.norm1, a.rstd1);
  a.qkv = Tensor::empty({T, c.q_dim() + 2 * c.kv_dim()}, dt, device_);
  ops::linear_forward(a.norm1, p.qkv_w, p.qkv_b, a.qkv);
  QkvViews qkv = split_qkv(a.qkv, c);
  ops::rope_forward(qkv.qk, positions, inv_freq_);
}

// The layer after attention (a.x_in and a.attn.out set): o projection, residual, MLP, residual.
Tensor Decoder::layer_attention_output(size_t l, LayerActs& a) {
  const LayerParams& p = params_.layers[l];
  const ModelConfig& c = config_;
  const int64_t T = a.x_in.size(0), C = c.hidden_size, F = c.intermediate_size;
  const DType dt = a.x_in.dtype();
  const float eps = float(c.rms_norm_eps);
  auto empty = [&](Shape shape, DType t) { return Tensor::empty(shape, t, device_); };

  a.x_mid = empty({T, C}, dt);
  ops::linear_forward(a.attn.out.view({T, c.q_dim()}), p.o_w, p.o_b, a.x_mid, a.x_in);

  a.norm2 = empty({T, C}, dt);
  a.rstd2 = empty({T}, DType::F32);
  ops::rmsnorm_forward(a.x_mid, p.post_norm, eps, a.norm2, a.rstd2);
  a.gate_up = empty({T, 2 * F}, dt);
  ops::linear_forward(a.norm2, p.gate_up_w, Tensor(), a.gate_up);
  a.h = empty({T, F}, dt);
  ops::swiglu_forward(a.gate_up, a.h);

  Tensor x_out = empty({T, C}, dt);
  ops::linear_forward(a.h, p.down_w, Tensor(), x_out, a.x_mid);
  return x_out;
}

Tensor Decoder::layer_forward(size_t l, const Tensor& x_in, const TokenBatch& batch, LayerActs& a) {
  layer_attention_input(l, x_in, batch.positions, a);
  QkvViews qkv = split_qkv(a.qkv, config_);
  attn::attention_forward(options_.attention, qkv.q, qkv.k, qkv.v, batch.layout, a.attn);
  return layer_attention_output(l, a);
}

Tensor Decoder::layer_qkv(size_t l, const Tensor& x_in, const Tensor& positions) {
  LayerActs a;
  layer_attention_input(l, x_in, positions, a);
  return a.qkv;
}

Tensor Decoder::layer_output(size_t l, const Tensor& x_in, const Tensor& attn_out) {
  LayerActs a;
  a.x_in = x_in;
  a.attn.out = attn_out;
  return layer_attention_output(l, a);
}

Tensor Decoder::layer_backward(size_t l, const TokenBatch& batch, const LayerActs& a, const Tensor& dx_out,
                               ops::GradWrite write) {
  const LayerParams& p = params_.layers[l];
  LayerParams& g = grads_.layers[l];
  const ModelConfig& c = config_;
  const int64_t T = dx_out.size(0), C = c.hidden_size, F = c.intermediate_size;
  const DType dt = dx_out.dtype();
  auto empty = [&](Shape shape) { return Tensor::empty(shape, dt, device_); };

  // x_out = x_mid + down(swiglu(gate_up(norm2(x_mid))))
  Tensor no_bias;
  Tensor dh = empty({T, F});
  ops::linear_backward(dx_out, a.h, p.down_w, dh, g.down_w, no_bias, write);
  Tensor dgate_up = empty({T, 2 * F});
  ops::swiglu_backward(dh, a.gate_up, dgate_up);
  Tensor dnorm2 = empty({T, C});
  ops::linear_backward(dgate_up, a.norm2, p.gate_up_w, dnorm2, g.gate_up_w, no_bias, write);
  Tensor dx_mid = empty({T, C});
  ops::rmsnorm_backward(dnorm2, a.x_mid, p.post_norm, a.rstd2, dx_mid, g.post_norm, write, dx_out);

  // x_mid = x_in + o(attention(rope(qkv(norm1(x_in)))))
  Tensor dattn = empty({T, c.q_dim()});
  ops::linear_backward(dx_mid, a.attn.out.view({T, c.q_dim()}), p.o_w, dattn, g.o_w, g.o_b, write);
  Tensor dqkv = empty({T, c.q_dim() + 2 * c.kv_dim()});
  QkvViews qkv = split_qkv(a.qkv, c), dqkv_views = split_qkv(dqkv, c);
  attn::attention_backward(options_.attention, qkv.q, qkv.k, qkv.v, batch.layout, a.attn,
                           dattn.unflatten(1, {-1, c.head_dim}), dqkv_views.q, dqkv_views.k, dqkv_views.v);
  ops::rope_backward(dqkv_views.qk, batch.positions, inv_freq_);
  Tensor dnorm1 = empty({T, C});
  ops::linear_backward(dqkv, a.norm1, p.qkv_w, dnorm1, g.qkv_w, g.qkv_b, write);
  Tensor dx_in = empty({T, C});
  ops::rmsnorm_backward(dnorm1, a.x_in, p.input_norm, a.rstd1, dx_in, g.input_norm, write, dx_mid);
  return dx_in;
}

// Runs the layers and returns the final-normed hidden state [T, C]; saves what backward needs.
Tensor Decoder::final_hidden(const TokenBatch& batch, std::vector<LayerActs>* saved, Tensor* pre_norm, Tensor* rstd) {
  Tensor x = embed(batch.ids);
  const int64_t every = options_.checkpoint_every;
  for (size_t l = 0; l < params_.layers.size(); ++l) {
    LayerActs scratch;
    LayerActs& a = saved ? (*saved)[l] : scratch;
    Tensor next = layer_forward(l, x, batch, a);
    if (saved && every > 0 && int64_t(l) % every == 0) a.drop_all_but_input();
    x = next;
  }
  Tensor r;
  Tensor normed = final_norm(x, &r);
  if (pre_norm) *pre_norm = x;
  if (rstd) *rstd = r;
  return normed;
}

Tensor Decoder::final_norm(const Tensor& x, Tensor* rstd) {
  const int64_t T = x.size(0);
  Tensor normed = Tensor::empty({T, config_.hidden_size}, x.dtype(), device_);
  Tensor r = Tensor::empty({T}, DType::F32, device_);
  ops::rmsnorm_forward(x, params_.final_norm, float(config_.rms_norm_eps), normed, r);
  if (rstd) *rstd = r;
  return normed;
}

Tensor Decoder::lm_logits(const Tensor& normed) {
  Tensor logits = Tensor::empty({normed.size(0), config_.vocab_size}, DType::F32, device_);
  ops::matmul(normed, params_.lm_head, logits, false, true);
  return logits;
}

LossSums Decoder::forward_backward(const TokenBatch& batch, float grad_scale, ops::GradWrite write) {
  std::vector<LayerActs> acts(params_.layers.size());
  Tensor x_last, rstd_final;
  Tensor normed = final_hidden(batch, &acts, &x_last, &rstd_final);

  Tensor dnormed = Tensor::empty(normed.shape(), normed.dtype(), device_), no_nll;
  const ops::LmHeadLossResult loss = ops::lm_head_loss(normed, params_.lm_head, batch.targets, grad_scale,
                                                       options_.loss_chunk_rows, dnormed, grads_.lm_head, write,
                                                       no_nll);
  normed = Tensor();
  Tensor dx = Tensor::empty(x_last.shape(), x_last.dtype(), device_);
  ops::rmsnorm_backward(dnormed, x_last, params_.final_norm, rstd_final, dx, grads_.final_norm, write);
  dnormed = Tensor();

  for (size_t l = acts.size(); l-- > 0;) {
    if (!acts[l].norm1.defined()) {  // checkpointed: recompute this layer's activations
      Tensor x_in = acts[l].x_in;
      layer_forward(l, x_in, batch, acts[l]);
    }
    dx = layer_backward(l, batch, acts[l], dx, write);
    acts[l] = LayerActs{};  // free as we go: peak memory is the forward's
    if (grads_ready_) grads_ready_(int64_t(l));
  }
  // embedding_backward adds the rows of the ids present. A tied embedding's gradient already
  // holds the lm_head's; an untied one is zeroed first when this micro-batch overwrites.
  if (write == ops::GradWrite::Overwrite && !config_.tie_word_embeddings) grads_.embed.zero_();
  ops::embedding_backward(dx, batch.ids, grads_.embed);
  if (grads_ready_) grads_ready_(kNonLayerGrads);
  return {loss.loss_sum, loss.tokens};
}

LossSums Decoder::forward_loss(const TokenBatch& batch, Tensor* nll_out) {
  Tensor normed = final_hidden(batch, nullptr, nullptr, nullptr);
  Tensor no_grad_h, no_grad_w, nll = nll_out ? *nll_out : Tensor();
  const ops::LmHeadLossResult loss = ops::lm_head_loss(normed, params_.lm_head, batch.targets, 1.0f,
                                                       options_.loss_chunk_rows, no_grad_h, no_grad_w,
                                                       ops::GradWrite::Overwrite, nll);
  return {loss.loss_sum, loss.tokens};
}

Tensor Decoder::forward_logits(const TokenBatch& batch) {
  Tensor normed = final_hidden(batch, nullptr, nullptr, nullptr);
  Tensor logits = Tensor::empty({normed.size(0), config_.vocab_size}, DType::F32, device_);
  ops::matmul(normed.to(DType::F32), params_.lm_head.to(DType::F32), logits, false, true);
  return logits;
}

// ---------------------------------------------------------------------------------------------
// Memory plan

MemoryPlan plan_memory(const ModelConfig& c, const DecoderOptions& options, DType param_dtype, int64_t tokens,
                       int64_t optimizer_shards) {
  const int64_t P = parameter_count(c), es = int64_t(dtype_size(param_dtype));
  const int64_t T = tokens, C = c.hidden_size, F = c.intermediate_size, L = c.num_hidden_layers;
  const int64_t qkv = c.q_dim() + 2 * c.kv_dim();
  MemoryPlan plan;
  plan.parameters = P * es;
  plan.gradients = P * 4;
  // fp32 master weights (when params are bf16) and the two AdamW moments, sharded by ZeRO-1.
  plan.optimizer = (P * (param_dtype == DType::F32 ? 2 : 3) * 4) / std::max<int64_t>(optimizer_shards, 1);
  // Saved per layer (see Decoder::LayerActs): x_in, norm1, qkv, attention out, x_mid, norm2,
  // gate_up, h in the activation dtype; rstd1/2 and lse in f32; selection indices (i32).
  const int64_t per_layer = T * (C * 4 + qkv + c.q_dim() + 3 * F) * es + T * (2 + c.num_attention_heads) * 4;
  const int64_t checkpointed = options.checkpoint_every > 0 ? (L + options.checkpoint_every - 1) / options.checkpoint_every : 0;
  plan.activations = (L - checkpointed) * per_layer + checkpointed * T * C * es +
                     (checkpointed > 0 ? per_layer : 0);  // one layer recomputed at a time
  // Backward scratch of one layer (dh, dgate_up, dqkv, ...) plus one chunk of logits and its
  // gradient, and the final norm's input/output; attention's backward adds its fp32 sums of dQ
  // (native and wgmma kernels) and dK/dV (wgmma).
  plan.workspace = T * (3 * F + qkv + c.q_dim() + 4 * C) * es +
                   std::min(options.loss_chunk_rows, T) * c.vocab_size * es * 2 + 2 * T * C * es + T * qkv * 4;
  return plan;
}

}  // namespace lrsa::model
