#include "lrsa/model/hf_export.h"

#include <set>

#include <nlohmann/json.hpp>

#include "model/file_io.h"

namespace lrsa::model {

namespace {

// What a tokenizer directory of transformers may hold; whichever exist are copied.
constexpr const char* kTokenizerFiles[] = {
    "tokenizer.json",   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json",       "merges.txt",            "tokenizer.model",         "chat_template.jinja",
    "chat_template.json",
};

std::vector<std::string> tokenizer_files(const std::filesystem::path& dir, std::string_view source) {
  LRSA_CHECK(std::filesystem::is_directory(dir), "{}: tokenizer directory {} does not exist", source, dir.string());
  std::vector<std::string> found;
  for (const char* name : kTokenizerFiles)
    if (std::filesystem::is_regular_file(dir / name)) found.emplace_back(name);
  LRSA_CHECK(!found.empty(),
             "{}: tokenizer directory {} holds none of the tokenizer files (tokenizer.json, tokenizer_config.json, "
             "vocab.json, tokenizer.model, ...)",
             source, dir.string());
  return found;
}

}  // namespace

std::vector<std::pair<std::string, Shape>> hf_tensor_specs(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  std::vector<std::pair<std::string, Shape>> specs;
  specs.emplace_back("model.embed_tokens.weight", Shape{V, H});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    const std::pair<const char*, int64_t> projections[] = {{"q_proj", c.q_dim()}, {"k_proj", c.kv_dim()},
                                                           {"v_proj", c.kv_dim()}};
    for (const auto& [proj, out] : projections) {
      specs.emplace_back(p + "self_attn." + proj + ".weight", Shape{out, H});
      if (c.attention_bias) specs.emplace_back(p + "self_attn." + proj + ".bias", Shape{out});
    }
    specs.emplace_back(p + "self_attn.o_proj.weight", Shape{H, c.q_dim()});
    if (c.has_o_proj_bias()) specs.emplace_back(p + "self_attn.o_proj.bias", Shape{H});
    specs.emplace_back(p + "mlp.gate_proj.weight", Shape{I, H});
    specs.emplace_back(p + "mlp.up_proj.weight", Shape{I, H});
    specs.emplace_back(p + "mlp.down_proj.weight", Shape{H, I});
    specs.emplace_back(p + "input_layernorm.weight", Shape{H});
    specs.emplace_back(p + "post_attention_layernorm.weight", Shape{H});
  }
  specs.emplace_back("model.norm.weight", Shape{H});
  if (!c.tie_word_embeddings) specs.emplace_back("lm_head.weight", Shape{V, H});
  return specs;
}

void check_hf_tensors(const ModelConfig& c, const TensorMap& tensors, std::string_view source,
                      bool allow_unexpected) {
  std::set<std::string> expected;
  for (const auto& [name, shape] : hf_tensor_specs(c)) {
    const auto it = tensors.find(name);
    LRSA_CHECK(it != tensors.end(), "{}: missing tensor '{}' (expected shape {})", source, name, shape_str(shape));
    LRSA_CHECK(it->second.defined() && it->second.shape() == shape, "{}: tensor '{}' has shape {}, expected {}",
               source, name, it->second.defined() ? shape_str(it->second.shape()) : "undefined", shape_str(shape));
    expected.insert(name);
  }
  if (allow_unexpected) return;
  for (const auto& [name, t] : tensors)
    LRSA_CHECK(expected.contains(name), "{}: unexpected tensor '{}' {} for this {} config{}", source, name,
               t.defined() ? t.describe() : "undefined", architecture_name(c.architecture),
               name == "lm_head.weight" ? " (tie_word_embeddings is true)" : "");
}

void export_hf_checkpoint(const std::filesystem::path& dir, const ModelConfig& c, const TensorMap& tensors,
                          const HfExportOptions& options) {
  const std::string source = fmt::format("hf export to {}", dir.string());
  // Every input is checked before the first file is written.
  validate_model_config(c, source);
  check_hf_tensors(c, tensors, source, /*allow_unexpected=*/false);
  const std::vector<std::string> tokenizer =
      options.tokenizer_dir.empty() ? std::vector<std::string>{} : tokenizer_files(options.tokenizer_dir, source);

  ModelConfig written = c;
  written.torch_dtype = tensors.at("model.embed_tokens.weight").dtype();
  // transformers refuses safetensors metadata without "format"; "pt" is what save_pretrained writes.
  write_safetensors_checkpoint(dir, tensors, options.max_shard_bytes, {{"format", "pt"}});

  const nlohmann::json config = model_config_to_hf_json(written);
  const nlohmann::json generation = {{"bos_token_id", config.at("bos_token_id")},
                                     {"eos_token_id", config.at("eos_token_id")}};
  write_file_atomic(dir / "generation_config.json", generation.dump(2) + "\n");
  for (const std::string& name : tokenizer)
    write_file_atomic(dir / name, read_text_file(options.tokenizer_dir / name));
  // Last: a directory with config.json is a complete checkpoint.
  write_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

}  // namespace lrsa::model
