#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "lrsa/model/config.h"

using namespace lrsa;
using namespace lrsa::model;
using nlohmann::json;

namespace {

// Qwen2.5-0.5B's config.json (transformers 4.x form).
const char* kQwen25Legacy = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// The same model as transformers 5 writes it.
const char* kQwen25V5 = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "dtype": "bfloat16",
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "layer_types": ["full_attention", "full_attention"],
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": null,
  "tie_word_embeddings": true,
  "transformers_version": "5.0.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// Llama-3.1-8B's config.json (transformers 4.x form).
const char* kLlama31Legacy = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// Llama-3.2-1B-Instruct style (tied embeddings, explicit head_dim, eos list) in transformers 5 form.
const char* kLlama32V5 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "dtype": "bfloat16",
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": true,
  "use_cache": true,
  "vocab_size": 128256
})";

ModelConfig parse(const char* text, const char* source = "config.json") {
  return parse_model_config(json::parse(text), source);
}

// Parses `base` with `edit` applied and returns the error message (empty when it parses).
template <typename Edit>
std::string error_after(const char* base, Edit edit) {
  json j = json::parse(base);
  edit(j);
  try {
    parse_model_config(j, "/ckpt/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<uint32_t> float_bits(const Tensor& t) {
  std::vector<uint32_t> bits(size_t(t.numel()));
  std::memcpy(bits.data(), t.data(), bits.size() * 4);
  return bits;
}

}  // namespace

TEST_CASE("Qwen2.5 config parses in the legacy and transformers-5 forms", "[model]") {
  const ModelConfig legacy = parse(kQwen25Legacy);
  CHECK(legacy.architecture == Architecture::Qwen2);
  CHECK(legacy.vocab_size == 151936);
  CHECK(legacy.hidden_size == 896);
  CHECK(legacy.intermediate_size == 4864);
  CHECK(legacy.num_hidden_layers == 24);
  CHECK(legacy.num_attention_heads == 14);
  CHECK(legacy.num_key_value_heads == 2);
  CHECK(legacy.head_dim == 64);  // 896 / 14
  CHECK(legacy.rms_norm_eps == 1e-6);
  CHECK(legacy.rope_theta == 1e6);
  CHECK(legacy.rope_scaling.type == RopeType::Default);
  CHECK(legacy.tie_word_embeddings);
  CHECK(legacy.attention_bias);  // Qwen2 always has q/k/v biases
  CHECK_FALSE(legacy.has_o_proj_bias());
  CHECK(legacy.max_position_embeddings == 32768);
  CHECK(legacy.bos_token_ids == std::vector<int64_t>{151643});
  CHECK(legacy.eos_token_ids == std::vector<int64_t>{151643});
  CHECK(legacy.torch_dtype == DType::BF16);
  CHECK(legacy.q_dim() == 896);
  CHECK(legacy.kv_dim() == 128);

  CHECK(parse(kQwen25V5) == legacy);
}

TEST_CASE("Llama 3 configs parse with llama3 rope scaling, bias and token-id lists", "[model]") {
  const ModelConfig l31 = parse(kLlama31Legacy);
  CHECK(l31.architecture == Architecture::Llama);
  CHECK(l31.head_dim == 128);
  CHECK(l31.num_key_value_heads == 8);
  CHECK(l31.rms_norm_eps == 1e-5);
  CHECK(l31.rope_theta == 500000.0);
  CHECK(l31.rope_scaling ==
        RopeScaling{RopeType::Llama3, 8.0, 1.0, 4.0, 8192});
  CHECK_FALSE(l31.tie_word_embeddings);
  CHECK_FALSE(l31.attention_bias);
  CHECK(l31.eos_token_ids == std::vector<int64_t>{128001});

  const ModelConfig l32 = parse(kLlama32V5);
  CHECK(l32.head_dim == 64);
  CHECK(l32.tie_word_embeddings);
  CHECK(l32.rope_scaling == RopeScaling{RopeType::Llama3, 32.0, 1.0, 4.0, 8192});
  CHECK(l32.rope_theta == 500000.0);
  CHECK(l32.eos_token_ids == std::vector<int64_t>{128001, 128008, 128009});
  CHECK(l32.torch_dtype == DType::BF16);

  json biased = json::parse(kLlama31Legacy);
  biased["attention_bias"] = true;
  const ModelConfig b = parse_model_config(biased, "config.json");
  CHECK(b.attention_bias);
  CHECK(b.has_o_proj_bias());  // Llama's attention_bias covers o_proj too
}

TEST_CASE("an inline architecture object uses the same fields with transformers' defaults", "[model]") {
  const json inline_arch = {{"model_type", "llama"},       {"vocab_size", 256},       {"hidden_size", 64},
                            {"intermediate_size", 128},    {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                            {"num_key_value_heads", 2},    {"rope_theta", 10000.0}};
  const ModelConfig c = parse_model_config(inline_arch, "run.json: model.architecture");
  CHECK(c.head_dim == 16);
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK(c.max_position_embeddings == 2048);
  CHECK(c.bos_token_ids == std::vector<int64_t>{1});
  CHECK(c.eos_token_ids == std::vector<int64_t>{2});
  CHECK(c.torch_dtype == DType::F32);

  json no_kv = inline_arch;
  no_kv.erase("num_key_value_heads");
  CHECK(parse_model_config(no_kv, "run.json").num_key_value_heads == 4);  // multi-head attention

  json by_class = inline_arch;
  by_class.erase("model_type");
  by_class["architectures"] = {"Qwen2ForCausalLM"};
  CHECK(parse_model_config(by_class, "run.json").architecture == Architecture::Qwen2);

  CHECK_THROWS_WITH(parse_model_config(json::array(), "run.json: model.architecture"),
                    Catch::Contains("run.json: model.architecture: model config must be a JSON object"));
}

TEST_CASE("config errors name the file and the field", "[model]") {
  using Catch::Contains;
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["rope_scaling"]["rope_type"] = "yarn"; }),
             Contains("/ckpt/config.json: rope_scaling.rope_type 'yarn' is not supported (supported: default, llama3)"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["rope_parameters"]["rope_type"] = "dynamic"; }),
             Contains("/ckpt/config.json: rope_parameters.rope_type 'dynamic' is not supported"));
  CHECK_THAT(error_after(kLlama31Legacy,
                         [](json& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; }),
             Contains("rope_scaling.type 'linear' is not supported"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["rope_scaling"].erase("low_freq_factor"); }),
             Contains("/ckpt/config.json: field 'rope_scaling.low_freq_factor' is required"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["rope_scaling"]["high_freq_factor"] = 0.5; }),
             Contains("field 'rope_scaling.high_freq_factor' (0.5) must exceed 'low_freq_factor' (1)"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["rope_parameters"].erase("rope_type"); }),
             Contains("field 'rope_parameters.rope_type' is required"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["rope_theta"] = 10000.0; }),
             Contains("'rope_parameters.rope_theta' (500000) disagrees with field 'rope_theta' (10000)"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["model_type"] = "mistral"; }),
             Contains("/ckpt/config.json: field 'model_type' 'mistral' is not supported (supported: qwen2, llama)"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j.erase("hidden_size"); }),
             Contains("/ckpt/config.json: field 'hidden_size' is required"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["hidden_size"] = "896"; }),
             Contains("field 'hidden_size' must be an integer, got \"896\""));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["num_hidden_layers"] = 0; }),
             Contains("field 'num_hidden_layers' must be positive, got 0"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["num_key_value_heads"] = 3; }),
             Contains("field 'num_key_value_heads' (3) must divide 'num_attention_heads' (14)"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["num_attention_heads"] = 15; }),
             Contains("field 'hidden_size' (896) is not divisible by 'num_attention_heads' (15); set 'head_dim'"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["head_dim"] = 63; }),
             Contains("field 'head_dim' (63) must be even"));
  CHECK_THAT(error_after(kQwen25Legacy, [](json& j) { j["use_sliding_window"] = true; }),
             Contains("field 'use_sliding_window' true is not supported"));
  CHECK_THAT(error_after(kQwen25V5, [](json& j) { j["layer_types"][1] = "sliding_attention"; }),
             Contains("field 'layer_types' entry \"sliding_attention\" is not supported"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["hidden_act"] = "gelu"; }),
             Contains("field 'hidden_act' 'gelu' is not supported (supported: silu)"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["mlp_bias"] = true; }),
             Contains("field 'mlp_bias' true is not supported"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["torch_dtype"] = "float64"; }),
             Contains("field 'torch_dtype' 'float64' is not supported"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["dtype"] = "int8"; }),
             Contains("field 'dtype' 'int8' is not supported"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["eos_token_id"] = {128001, "x"}; }),
             Contains("field 'eos_token_id' must be an integer or a list of integers"));
  CHECK_THAT(error_after(kLlama32V5, [](json& j) { j["eos_token_id"] = 128256; }),
             Contains("field 'eos_token_id' 128256 is outside the vocabulary [0, 128256)"));
  CHECK_THAT(error_after(kLlama31Legacy, [](json& j) { j["rms_norm_eps"] = -1.0; }),
             Contains("field 'rms_norm_eps' must be positive"));
  CHECK(error_after(kLlama31Legacy, [](json& j) { j["some_future_field"] = {1, 2}; }).empty());
}

TEST_CASE("HF config.json serialization round-trips and carries the transformers fields", "[model]") {
  for (const char* text : {kQwen25Legacy, kQwen25V5, kLlama31Legacy, kLlama32V5}) {
    const ModelConfig c = parse(text);
    const json out = model_config_to_hf_json(c);
    CHECK(parse_model_config(out, "serialized") == c);
    const bool qwen2 = c.architecture == Architecture::Qwen2;
    CHECK(out["architectures"] == json::array({qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}));
    CHECK(out["model_type"] == (qwen2 ? "qwen2" : "llama"));
    CHECK(out["hidden_act"] == "silu");
    CHECK(out["torch_dtype"] == "bfloat16");
    CHECK(out.contains("attention_bias") == !qwen2);
    CHECK(out.contains("use_sliding_window") == qwen2);
  }
  const json l32 = model_config_to_hf_json(parse(kLlama32V5));
  CHECK(l32["eos_token_id"] == json::array({128001, 128008, 128009}));
  CHECK(l32["rope_scaling"]["rope_type"] == "llama3");
  CHECK(l32["rope_scaling"]["factor"] == 32.0);

  const auto dir = std::filesystem::temp_directory_path() / "lrsa-test-config";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << kLlama31Legacy;
  CHECK(load_model_config(dir) == parse(kLlama31Legacy));
  std::ofstream(dir / "config.json") << "{\"model_type\": ";
  CHECK_THROWS_WITH(load_model_config(dir / "config.json"),
                    Catch::Contains((dir / "config.json").string() + ": invalid JSON"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("rope inverse frequencies match transformers bit for bit", "[model]") {
  // Expected bits from transformers 5.24 / torch 2.15 (CPU, fp32): ROPE_INIT_FUNCTIONS["llama3"]
  // and LlamaRotaryEmbedding.compute_default_rope_parameters.
  struct Case {
    int64_t head_dim;
    double theta;
    RopeScaling scaling;
    std::vector<uint32_t> bits;
  };
  const std::vector<Case> cases = {
      {16, 500000.0, {RopeType::Llama3, 8.0, 1.0, 4.0, 64},
       {0x3f800000, 0x3da29e0c, 0x3b9a08c8, 0x3a6ef74f, 0x39395d21, 0x380fc8f8, 0x36df10c4, 0x35ad07a7}},
      {32, 10000.0, {RopeType::Llama3, 3.0, 1.5, 5.0, 100},
       {0x3f800000, 0x3f0ff59a, 0x3ea1e89b, 0x3dd5aca0, 0x3d0fad0a, 0x3c998e81, 0x3c2cb3d9, 0x3bc23c4c,
        0x3b5a740d, 0x3af5b0d0, 0x3a8a297b, 0x3a1b6370, 0x39aec33f, 0x39448d73, 0x38dd0f2b, 0x38789f19}},
      {64, 500000.0, {RopeType::Llama3, 32.0, 1.0, 4.0, 8192},
       {0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad, 0x3d681e67,
        0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402, 0x3b527720, 0x3aa9279b,
        0x39e13620, 0x38cb98f7, 0x37a3418d, 0x3758ac81, 0x370fc8f8, 0x36bed4f4, 0x367d45c3, 0x3628126b,
        0x35df10c4, 0x359406cb, 0x35447610, 0x35025f34, 0x34ad07a7, 0x3465a54d, 0x341864a7, 0x33ca41b0}},
      {128, 500000.0, {RopeType::Llama3, 8.0, 1.0, 4.0, 8192},
       {0x3f800000, 0x3f508ac1, 0x3f29e1c6, 0x3f0a6384, 0x3ee177bc, 0x3eb7ab7d, 0x3e959ee3, 0x3e73c461,
        0x3e4693b0, 0x3e21c3a0, 0x3e03c6a0, 0x3dd6b19c, 0x3daee4ad, 0x3d8e7898, 0x3d681e67, 0x3d3d1684,
        0x3d1a08c8, 0x3cfaf53f, 0x3ccc6f49, 0x3ca68939, 0x3c87a9c3, 0x3c5d06ec, 0x3c340d6d, 0x3c12ac7f,
        0x3beef74f, 0x3bc2aa76, 0x3b9e9402, 0x3b812e35, 0x3b527720, 0x3b0dfd06, 0x3ab3d11d, 0x3a60979e,
        0x3a0995d2, 0x39a3f108, 0x393b2dd2, 0x38c86886, 0x38a3418d, 0x3884fdbf, 0x3858ac81, 0x38308199,
        0x380fc8f8, 0x37ea426f, 0x37bed4f4, 0x379b7475, 0x377d45c3, 0x374e51f5, 0x3728126b, 0x3708ea0f,
        0x36df10c4, 0x36b5b687, 0x369406cb, 0x36712b80, 0x36447610, 0x36200a69, 0x36025f34, 0x35d46808,
        0x35ad07a7, 0x358cf400, 0x3565a54d, 0x353b12c7, 0x351864a7, 0x34f848c2, 0x34ca41b0, 0x34a4c2ff}},
      {64, 1000000.0, {},
       {0x3f800000, 0x3f263de0, 0x3ed7e89b, 0x3e8c3504, 0x3e361887, 0x3dec7fd6, 0x3d99940d, 0x3d47763f,
        0x3d0186e3, 0x3ca8398b, 0x3c5a7bf2, 0x3c0de12d, 0x3bb8449c, 0x3b6f520e, 0x3b1b690d, 0x3ac9d75c,
        0x3a83126f, 0x3a2a3b44, 0x39dd1725, 0x398f9272, 0x393a7753, 0x38f22ce2, 0x389d43a4, 0x384c3fbe,
        0x3804a2b2, 0x37ac431d, 0x375fba4f, 0x371148e3, 0x36bcb0c1, 0x36751070, 0x361f23e4, 0x35ceaf79}},
  };
  for (const Case& k : cases) {
    ModelConfig c;
    c.head_dim = k.head_dim;
    c.rope_theta = k.theta;
    c.rope_scaling = k.scaling;
    const Tensor inv_freq = rope_inv_freq(c);
    INFO("head_dim " << k.head_dim << " theta " << k.theta << " llama3 " << (k.scaling.type == RopeType::Llama3));
    REQUIRE(inv_freq.dtype() == DType::F32);
    REQUIRE(inv_freq.shape() == Shape{k.head_dim / 2});
    CHECK(float_bits(inv_freq) == k.bits);
  }
}
