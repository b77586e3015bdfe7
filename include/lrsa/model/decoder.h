#pragma once
// The Qwen2/Llama decoder, forward and backward written out per layer (llm.c style):
//   embedding -> N x [RMSNorm, fused q/k/v projection (+bias), RoPE on q and k, attention
//   (dense or LRSA, attn/attention.h), o projection (+bias), residual, RMSNorm, fused gate/up
//   projection, SwiGLU, down projection, residual] -> final RMSNorm -> lm_head -> chunked CE.
// Activations are stored in the parameter dtype (bf16 on GPU); norm statistics, softmax and loss
// in fp32. No T x T tensor exists anywhere. Shapes: T tokens of one packed micro-batch, C hidden,
// F intermediate, Hq/Hk heads of D dims, V vocabulary.
#include <cstdint>
#include <functional>
#include <vector>

#include "lrsa/attn/attention.h"
#include "lrsa/model/config.h"
#include "lrsa/model/params.h"
#include "lrsa/ops/grad_write.h"

namespace lrsa::model {

// One packed micro-batch on the model's device.
struct TokenBatch {
  Tensor ids;        // [T] i32
  Tensor targets;    // [T] i32: the token to predict after position t, or -100 (not trained)
  Tensor positions;  // [T] i32: position within the document (RoPE), restarting at 0
  attn::SeqLayout layout;
  int64_t trained_tokens = 0;  // targets != -100

  // From host vectors in the Hugging Face convention: labels aligned with input_ids (-100 = not
  // trained); the shift to next-token targets happens here, per document, so the last token of
  // a document never predicts the first token of the next one. Empty positions: 0.. per document.
  static TokenBatch from_host(const std::vector<int32_t>& input_ids, const std::vector<int32_t>& labels,
                              const std::vector<int64_t>& cu_seqlens, Device device,
                              const std::vector<int32_t>& positions = {});
};

struct DecoderOptions {
  attn::AttentionConfig attention;
  // Recompute each layer's activations in backward for layers where l % checkpoint_every == 0
  // (0: keep everything; 1: checkpoint every layer).
  int64_t checkpoint_every = 0;
  int64_t loss_chunk_rows = 4096;  // tokens per lm_head/cross-entropy chunk
};

// q [T, Hq, D], k and v [T, Hk, D] as views of the fused projection output [T, Hq*D + 2*Hk*D].
struct QkvViews {
  Tensor q, k, v;
  Tensor qk;  // [T, Hq + Hk, D]: q and k side by side, so RoPE rotates both in one launch
};
QkvViews split_qkv(const Tensor& qkv, const ModelConfig& c);

struct LossSums {
  double loss_sum = 0;  // sum of nll over trained tokens
  int64_t tokens = 0;
};

class Decoder {
 public:
  // Weights in param_dtype (bf16 or f32) on `device`, zero-initialized (see init_params /
  // load_hf_weights); gradients f32, zeroed.
  Decoder(const ModelConfig& config, const DecoderOptions& options, DType param_dtype, Device device);

  const ModelConfig& config() const { return config_; }
  const DecoderOptions& options() const { return options_; }
  Device device() const { return device_; }
  ParamSet& params() { return params_; }
  ParamSet& grads() { return grads_; }
  const ParamSet& params() const { return params_; }

  // Forward and backward of one micro-batch: the gradients of grad_scale * sum(nll) (grad_scale =
  // 1 / trained tokens of the global batch) replace grads() (Overwrite: a step's first
  // micro-batch, with no zeroing pass before it) or are added to them (Accumulate: the others).
  LossSums forward_backward(const TokenBatch& batch, float grad_scale, ops::GradWrite write);

  // Called during forward_backward as gradients become final for this micro-batch: with the
  // layer index after each layer's backward (layers finish in reverse order), then with
  // kNonLayerGrads once the embedding, final norm and lm_head gradients are complete. Lets data
  // parallelism reduce a layer's gradients while the layers below it are still computing.
  static constexpr int64_t kNonLayerGrads = -1;
  void set_grads_ready_callback(std::function<void(int64_t layer)> callback) { grads_ready_ = std::move(callback); }

  // Forward only. nll_out (optional, [T] f32 on the device) receives every position's nll.
  LossSums forward_loss(const TokenBatch& batch, Tensor* nll_out = nullptr);

  // Forward only, full logits [T, V] f32 (for tests and small inputs).
  Tensor forward_logits(const TokenBatch& batch);

  // The forward pass in pieces, the same ops as above, for inference with a KV cache
  // (lrsa/infer): embed -> per layer [layer_qkv -> attention -> layer_output] -> final_norm ->
  // lm_logits.
  Tensor embed(const Tensor& ids);  // ids [T] i32 -> x [T, C]
  void embed(const Tensor& ids, Tensor& x);  // into x [T, C] of the parameters' dtype
  // Layer l up to attention: qkv [T, Hq*D + 2*Hk*D] (split_qkv), q and k after RoPE at `positions`.
  Tensor layer_qkv(size_t l, const Tensor& x_in, const Tensor& positions);
  // Layer l from the attention output attn_out [T, Hq, D] on: o projection, residual, MLP -> [T, C].
  Tensor layer_output(size_t l, const Tensor& x_in, const Tensor& attn_out);
  Tensor final_norm(const Tensor& x, Tensor* rstd = nullptr);  // [T, C] -> [T, C]
  Tensor lm_logits(const Tensor& normed);  // [T, C] -> [T, V] f32 (products in the parameter dtype)

 private:
  struct LayerActs;
  void layer_attention_input(size_t l, const Tensor& x_in, const Tensor& positions, LayerActs& acts);
  Tensor layer_attention_output(size_t l, LayerActs& acts);
  Tensor layer_forward(size_t l, const Tensor& x_in, const TokenBatch& batch, LayerActs& acts);
  Tensor layer_backward(size_t l, const TokenBatch& batch, const LayerActs& acts, const Tensor& dx_out,
                        ops::GradWrite write);
  Tensor final_hidden(const TokenBatch& batch, std::vector<LayerActs>* saved, Tensor* pre_norm, Tensor* rstd);

  ModelConfig config_;
  DecoderOptions options_;
  Device device_;
  ParamSet params_, grads_;
  Tensor inv_freq_;  // [D/2] f32 on device
  std::function<void(int64_t)> grads_ready_;
};

// Predicted device memory of training, printed before training starts.
struct MemoryPlan {
  int64_t parameters = 0, gradients = 0, optimizer = 0, activations = 0, workspace = 0;
  int64_t total() const { return parameters + gradients + optimizer + activations + workspace; }
};
// tokens: micro-batch tokens; optimizer_shards: ZeRO-1 world size (1 = unsharded).
MemoryPlan plan_memory(const ModelConfig& c, const DecoderOptions& options, DType param_dtype, int64_t tokens,
                       int64_t optimizer_shards);

}  // namespace lrsa::model
