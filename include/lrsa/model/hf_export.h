#pragma once
// Hugging Face checkpoint layout of a Qwen2/Llama decoder: tensor names and shapes, completeness
// checks for loaders, and export of a directory that transformers loads with from_pretrained.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lrsa/model/config.h"
#include "lrsa/model/safetensors.h"

namespace lrsa::model {

// Every tensor of the HF state dict in transformers' order:
//   model.embed_tokens.weight [V, H]
//   model.layers.N.self_attn.{q,k,v}_proj.weight [heads*D or kv_heads*D, H] (+ .bias when attention_bias)
//   model.layers.N.self_attn.o_proj.weight [H, heads*D] (+ .bias for Llama with attention_bias)
//   model.layers.N.mlp.{gate,up}_proj.weight [I, H], mlp.down_proj.weight [H, I]
//   model.layers.N.{input,post_attention}_layernorm.weight [H], model.norm.weight [H]
//   lm_head.weight [V, H] unless tie_word_embeddings
std::vector<std::pair<std::string, Shape>> hf_tensor_specs(const ModelConfig& c);

// Throws lrsa::Error naming `source` and the first missing tensor or shape mismatch. Tensors not
// in the specs are an error unless `allow_unexpected` (checkpoints may carry buffers such as
// rotary_emb.inv_freq, or lm_head.weight next to tied embeddings, which transformers ignores).
void check_hf_tensors(const ModelConfig& c, const TensorMap& tensors, std::string_view source,
                      bool allow_unexpected);

struct HfExportOptions {
  std::filesystem::path tokenizer_dir;  // tokenizer files are copied from here when set
  uint64_t max_shard_bytes = 0;         // 0: one model.safetensors; else shards of at most this
};

// Writes `dir` (created if missing): model.safetensors or shards + index, generation_config.json
// (bos/eos), tokenizer files, and config.json last. Every file is replaced atomically. The
// tensors must match hf_tensor_specs exactly; they are written in their own dtype, and
// config.json's torch_dtype is that of model.embed_tokens.weight.
void export_hf_checkpoint(const std::filesystem::path& dir, const ModelConfig& c, const TensorMap& tensors,
                          const HfExportOptions& options = {});

}  // namespace lrsa::model
