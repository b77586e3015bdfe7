#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "lrsa/model/hf_export.h"
#include "model/file_io.h"

using namespace lrsa;
using namespace lrsa::model;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The parity fixtures' sizes: vocab 256, hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128.
ModelConfig tiny_config(Architecture arch, bool tied, bool attention_bias) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.tie_word_embeddings = tied;
  c.attention_bias = attention_bias;
  c.max_position_embeddings = 512;
  c.bos_token_ids = {1};
  c.eos_token_ids = {2, 3};
  return c;
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Shape>>& specs) {
  std::vector<std::string> names;
  for (const auto& [name, shape] : specs) names.push_back(name);
  return names;
}

TensorMap random_weights(const ModelConfig& c, DType dtype) {
  TensorMap tensors;
  uint64_t stream = 0;
  for (const auto& [name, shape] : hf_tensor_specs(c))
    tensors[name] = Tensor::normal(shape, 7, stream++, 0.0f, 0.02f, dtype);
  return tensors;
}

std::string check_error(const ModelConfig& c, const TensorMap& tensors, bool allow_unexpected = false) {
  try {
    check_hf_tensors(c, tensors, "ckpt/", allow_unexpected);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("lrsa-test-hf-export-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  return dir;
}

std::vector<std::string> dir_listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST_CASE("hf_tensor_specs follow transformers' names, order and shapes", "[model]") {
  const ModelConfig qwen = tiny_config(Architecture::Qwen2, /*tied=*/false, /*attention_bias=*/true);
  const auto specs = hf_tensor_specs(qwen);
  REQUIRE(specs.size() == 1 + 2 * 12 + 2);
  CHECK(specs.front() == std::pair<std::string, Shape>{"model.embed_tokens.weight", {256, 64}});
  const std::vector<std::pair<std::string, Shape>> layer0(specs.begin() + 1, specs.begin() + 13);
  CHECK(layer0 == std::vector<std::pair<std::string, Shape>>{
                      {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
                      {"model.layers.0.self_attn.q_proj.bias", {64}},
                      {"model.layers.0.self_attn.k_proj.weight", {32, 64}},
                      {"model.layers.0.self_attn.k_proj.bias", {32}},
                      {"model.layers.0.self_attn.v_proj.weight", {32, 64}},
                      {"model.layers.0.self_attn.v_proj.bias", {32}},
                      {"model.layers.0.self_attn.o_proj.weight", {64, 64}},
                      {"model.layers.0.mlp.gate_proj.weight", {128, 64}},
                      {"model.layers.0.mlp.up_proj.weight", {128, 64}},
                      {"model.layers.0.mlp.down_proj.weight", {64, 128}},
                      {"model.layers.0.input_layernorm.weight", {64}},
                      {"model.layers.0.post_attention_layernorm.weight", {64}},
                  });
  CHECK(specs[13].first == "model.layers.1.self_attn.q_proj.weight");
  const auto shape_of = [&](const std::string& name) {
    for (const auto& [n, s] : specs)
      if (n == name) return s;
    return Shape{-1};
  };
  CHECK(shape_of("model.layers.1.self_attn.k_proj.weight") == Shape{32, 64});
  CHECK(shape_of("model.layers.1.self_attn.o_proj.weight") == Shape{64, 64});
  CHECK(shape_of("model.layers.1.mlp.down_proj.weight") == Shape{64, 128});
  CHECK(shape_of("model.layers.1.self_attn.o_proj.bias") == Shape{-1});  // Qwen2: no o_proj bias
  CHECK(specs[specs.size() - 2] == std::pair<std::string, Shape>{"model.norm.weight", {64}});
  CHECK(specs.back() == std::pair<std::string, Shape>{"lm_head.weight", {256, 64}});

  const ModelConfig llama = tiny_config(Architecture::Llama, /*tied=*/true, /*attention_bias=*/false);
  const auto llama_specs = hf_tensor_specs(llama);
  CHECK(llama_specs.size() == 1 + 2 * 9 + 1);
  CHECK(llama_specs.back().first == "model.norm.weight");  // tied: no lm_head.weight
  for (const auto& [name, shape] : llama_specs) CHECK(name.find("bias") == std::string::npos);

  const auto biased = names_of(hf_tensor_specs(tiny_config(Architecture::Llama, false, true)));
  CHECK(std::count(biased.begin(), biased.end(), "model.layers.1.self_attn.o_proj.bias") == 1);
  CHECK(std::count(biased.begin(), biased.end(), "model.layers.1.self_attn.v_proj.bias") == 1);
  CHECK(biased.size() == 1 + 2 * 13 + 2);
}

TEST_CASE("check_hf_tensors names missing, mismatched and unexpected tensors", "[model]") {
  const ModelConfig c = tiny_config(Architecture::Qwen2, false, true);
  TensorMap tensors = random_weights(c, DType::F32);
  CHECK(check_error(c, tensors).empty());

  TensorMap missing = tensors;
  missing.erase("model.layers.1.self_attn.v_proj.bias");
  CHECK_THAT(check_error(c, missing),
             Catch::Contains("ckpt/: missing tensor 'model.layers.1.self_attn.v_proj.bias' (expected shape [32])"));

  TensorMap wrong = tensors;
  wrong["model.layers.0.mlp.down_proj.weight"] = Tensor::zeros({128, 64}, DType::F32);
  CHECK_THAT(check_error(c, wrong),
             Catch::Contains("ckpt/: tensor 'model.layers.0.mlp.down_proj.weight' has shape [128, 64], expected [64, 128]"));

  TensorMap extra = tensors;
  extra["model.layers.0.self_attn.rotary_emb.inv_freq"] = Tensor::zeros({8}, DType::F32);
  CHECK_THAT(check_error(c, extra), Catch::Contains("ckpt/: unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq'"));
  CHECK(check_error(c, extra, /*allow_unexpected=*/true).empty());

  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  CHECK_THAT(check_error(tied, tensors), Catch::Contains("unexpected tensor 'lm_head.weight'") &&
                                             Catch::Contains("(tie_word_embeddings is true)"));
}

TEST_CASE("export writes a complete HF directory", "[model]") {
  const fs::path tokenizer = fresh_dir("tokenizer");
  fs::create_directories(tokenizer);
  std::ofstream(tokenizer / "tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";
  std::ofstream(tokenizer / "tokenizer_config.json") << R"({"eos_token": "</s>"})";
  std::ofstream(tokenizer / "notes.txt") << "not a tokenizer file";

  ModelConfig c = tiny_config(Architecture::Llama, /*tied=*/true, /*attention_bias=*/false);
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeType::Llama3, 8.0, 1.0, 4.0, 64};
  const TensorMap weights = random_weights(c, DType::BF16);

  const fs::path dir = fresh_dir("single");
  export_hf_checkpoint(dir, c, weights, {tokenizer, 0});
  CHECK(dir_listing(dir) == std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"});
  const json config = read_json_file(dir / "config.json");
  CHECK(config["architectures"] == json::array({"LlamaForCausalLM"}));
  CHECK(config["torch_dtype"] == "bfloat16");  // the dtype the weights were written in
  ModelConfig expected = c;
  expected.torch_dtype = DType::BF16;
  CHECK(load_model_config(dir) == expected);
  CHECK(read_json_file(dir / "generation_config.json") == json{{"bos_token_id", 1}, {"eos_token_id", {2, 3}}});
  CHECK(read_text_file(dir / "tokenizer.json") == read_text_file(tokenizer / "tokenizer.json"));

  const SafetensorsContents st = read_safetensors(dir / "model.safetensors");
  CHECK(st.metadata.at("format") == "pt");  // transformers refuses safetensors metadata without it
  const TensorMap back = load_safetensors_checkpoint(dir);
  check_hf_tensors(c, back, dir.string(), false);
  for (const auto& [name, t] : weights) CHECK(back.at(name).to_floats() == t.to_floats());

  const fs::path sharded = fresh_dir("sharded");
  export_hf_checkpoint(sharded, c, weights, {{}, 20000});
  const json index = read_json_file(sharded / "model.safetensors.index.json");
  CHECK(index["weight_map"].size() == weights.size());
  std::set<std::string> shard_files;
  for (const auto& [name, file] : index["weight_map"].items()) shard_files.insert(file.get<std::string>());
  CHECK(shard_files.size() >= 3);  // 20 kB shards of 84 kB of weights
  CHECK(shard_files.begin()->starts_with("model-00001-of-"));
  CHECK_FALSE(fs::exists(sharded / "tokenizer.json"));
  check_hf_tensors(c, load_safetensors_checkpoint(sharded), sharded.string(), false);

  // An incomplete or inconsistent export fails before anything is written.
  const fs::path bad = fresh_dir("bad");
  TensorMap with_head = weights;
  with_head["lm_head.weight"] = Tensor::zeros({256, 64}, DType::BF16);
  CHECK_THROWS_WITH(export_hf_checkpoint(bad, c, with_head),
                    Catch::Contains("hf export to " + bad.string() + ": unexpected tensor 'lm_head.weight'"));
  CHECK_FALSE(fs::exists(bad));
  CHECK_THROWS_WITH(export_hf_checkpoint(bad, c, weights, {tokenizer / "missing", 0}),
                    Catch::Contains("tokenizer directory " + (tokenizer / "missing").string() + " does not exist"));
  CHECK_FALSE(fs::exists(bad));

  for (const fs::path& d : {tokenizer, dir, sharded, bad}) fs::remove_all(d);
}

TEST_CASE("the transformers parity fixtures load as complete checkpoints", "[model]") {
  // Written by transformers' save_pretrained (scripts/fixtures/make_model_fixtures.py): real HF
  // output in the transformers-5 config form, read with our config parser and loader.
  for (const char* name : {"qwen2_tiny", "llama3_tiny"}) {
    INFO(name);
    const fs::path dir = fs::path(LRSA_SOURCE_DIR) / "tests/model/fixtures" / name;
    const ModelConfig c = load_model_config(dir);
    const bool qwen2 = std::string(name) == "qwen2_tiny";
    CHECK(c.architecture == (qwen2 ? Architecture::Qwen2 : Architecture::Llama));
    CHECK(c.tie_word_embeddings == !qwen2);
    CHECK(c.attention_bias == qwen2);
    CHECK(c.rope_scaling.type == (qwen2 ? RopeType::Default : RopeType::Llama3));
    CHECK(c.torch_dtype == DType::F32);
    check_hf_tensors(c, load_safetensors_checkpoint(dir), dir.string(), /*allow_unexpected=*/false);
    check_hf_tensors(c, read_safetensors(dir / "grads.safetensors").tensors, "grads", false);

    const TensorMap reference = read_safetensors(dir / "reference.safetensors").tensors;
    const Tensor inv_freq = rope_inv_freq(c);
    const Tensor& expected = reference.at("rope_inv_freq");
    REQUIRE(expected.numel() == inv_freq.numel());
    CHECK(std::memcmp(inv_freq.data(), expected.data(), expected.nbytes()) == 0);
    CHECK(reference.at("logits").shape() == Shape{1, 40, c.vocab_size});
  }
}
