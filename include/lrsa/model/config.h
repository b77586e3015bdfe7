#pragma once
// Decoder architecture of a Qwen2 or Llama model, read from a Hugging Face config.json (legacy
// form: rope_theta / rope_scaling / torch_dtype; transformers-5 form: rope_parameters / dtype) or
// from an inline "architecture" object of a run config with the same field names.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "lrsa/core/dtype.h"
#include "lrsa/core/tensor.h"

namespace lrsa::model {

enum class Architecture : uint8_t { Qwen2, Llama };
std::string_view architecture_name(Architecture a);  // "qwen2", "llama" (HF model_type)

enum class RopeType : uint8_t { Default, Llama3 };

struct RopeScaling {
  RopeType type = RopeType::Default;
  // llama3 only (transformers' _compute_llama3_parameters):
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  Architecture architecture = Architecture::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit, or hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // q/k/v projections carry biases: always for Qwen2; Llama's attention_bias (which also gives
  // o_proj a bias, see has_o_proj_bias).
  bool attention_bias = false;
  int64_t max_position_embeddings = 0;
  std::vector<int64_t> bos_token_ids;  // HF allows an int or a list; empty when null
  std::vector<int64_t> eos_token_ids;
  DType torch_dtype = DType::F32;  // storage dtype of the checkpoint (float32 when unspecified)

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  bool has_o_proj_bias() const { return architecture == Architecture::Llama && attention_bias; }
  bool operator==(const ModelConfig&) const = default;
};

// Parses and validates; `source` ("path/config.json", "run.json: model.architecture") starts every
// error message, which also names the field. Unknown fields are ignored as transformers does;
// features this decoder does not implement (other activations, sliding windows, mlp biases, rope
// types other than default/llama3) are rejected by name.
ModelConfig parse_model_config(const nlohmann::json& j, std::string_view source);

// Reads `path`, a config.json or a directory holding one.
ModelConfig load_model_config(const std::filesystem::path& path);

// Throws lrsa::Error naming `source` and the field when the sizes are inconsistent.
void validate_model_config(const ModelConfig& c, std::string_view source);

// HF config.json for Qwen2ForCausalLM / LlamaForCausalLM in the legacy form (rope_theta,
// rope_scaling, torch_dtype), which both transformers 4.x and 5 read.
nlohmann::json model_config_to_hf_json(const ModelConfig& c);

// RoPE inverse frequencies [head_dim / 2] f32 on the CPU, bit-identical to transformers' fp32
// computation for the default and llama3 rope types.
Tensor rope_inv_freq(const ModelConfig& c);

}  // namespace lrsa::model
