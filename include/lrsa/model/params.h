#pragma once
// Parameters of a decoder live in one flat buffer (llm.c's arena): every weight is a contiguous
// range of it, so the optimizer, the gradient all-reduce and ZeRO sharding each see one tensor.
// The same layout serves weights (bf16/f32), gradients, master weights and AdamW moments (f32).
//
// Fused layouts (the Hugging Face tensors are row ranges of these):
//   qkv_w [Hq*D + 2*Hk*D, C]   rows: q_proj | k_proj | v_proj      (qkv_b likewise, Qwen2)
//   gate_up_w [2F, C]          rows: gate_proj | up_proj
#include <string>
#include <vector>

#include "lrsa/core/tensor.h"
#include "lrsa/model/config.h"
#include "lrsa/model/safetensors.h"

namespace lrsa::model {

struct LayerParams {
  Tensor input_norm;  // [C]
  Tensor qkv_w;       // [Hq*D + 2*Hk*D, C]
  Tensor qkv_b;       // [Hq*D + 2*Hk*D] or undefined
  Tensor o_w;         // [C, Hq*D]
  Tensor o_b;         // [C] or undefined (Llama with attention_bias)
  Tensor post_norm;   // [C]
  Tensor gate_up_w;   // [2F, C]
  Tensor down_w;      // [C, F]
};

struct ParamSet {
  Tensor flat;  // [P]: every tensor below is a view of it
  Tensor embed;       // [V, C]
  Tensor final_norm;  // [C]
  Tensor lm_head;     // [V, C]; the same view as embed when embeddings are tied
  std::vector<LayerParams> layers;
};

// One entry of the layout: an internal name ("layers.3.qkv_w"), its shape and element offset.
struct ParamEntry {
  std::string name;
  Shape shape;
  int64_t offset;
};

std::vector<ParamEntry> parameter_layout(const ModelConfig& c);
int64_t parameter_count(const ModelConfig& c);

// A zero-filled parameter set of `dtype` on `device`, laid out by parameter_layout.
ParamSet make_param_set(const ModelConfig& c, DType dtype, Device device);

// Random initialization as transformers does for these models: matrices and embeddings
// ~ N(0, 0.02), norms 1, biases 0; from Philox (seed, stream = entry index): device-independent.
void init_params(ParamSet& params, const ModelConfig& c, uint64_t seed, float std = 0.02f);

// The Hugging Face state dict as views into `params` (q/k/v and gate/up are row ranges of the
// fused tensors), in hf_tensor_specs order.
TensorMap hf_views(const ParamSet& params, const ModelConfig& c);

// Copies a checkpoint (any dtype; checked complete and shape-correct) into `params`.
void load_hf_weights(ParamSet& params, const ModelConfig& c, const TensorMap& checkpoint, std::string_view source);

}  // namespace lrsa::model
