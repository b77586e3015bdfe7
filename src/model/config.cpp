#include "lrsa/model/config.h"

#include <cmath>
#include <numbers>
#include <optional>

#include <nlohmann/json.hpp>

#include "lrsa/ops/rope.h"
#include "model/file_io.h"

namespace lrsa::model {

using nlohmann::json;

namespace {

std::string json_excerpt(const json& v) {
  std::string text = v.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// Typed access to the fields of one JSON object; errors read "<source>: field '<prefix><key>' ...".
// A field set to null counts as absent, as transformers treats it.
struct Fields {
  const json& obj;
  std::string_view source;
  std::string prefix;

  std::string name(const char* key) const { return prefix + key; }

  const json* find(const char* key) const {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<int64_t> integer(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    LRSA_CHECK(v->is_number_integer() && (!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX)),
               "{}: field '{}' must be an integer, got {}", source, name(key), json_excerpt(*v));
    return v->get<int64_t>();
  }
  std::optional<double> number(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    LRSA_CHECK(v->is_number(), "{}: field '{}' must be a number, got {}", source, name(key), json_excerpt(*v));
    return v->get<double>();
  }
  std::optional<bool> boolean(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    LRSA_CHECK(v->is_boolean(), "{}: field '{}' must be true or false, got {}", source, name(key), json_excerpt(*v));
    return v->get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    LRSA_CHECK(v->is_string(), "{}: field '{}' must be a string, got {}", source, name(key), json_excerpt(*v));
    return v->get<std::string>();
  }

  template <typename T>
  T required(const std::optional<T>& value, const char* key) const {
    LRSA_CHECK(value.has_value(), "{}: field '{}' is required", source, name(key));
    return *value;
  }
};

Architecture parse_architecture(const Fields& f) {
  if (const auto type = f.string("model_type")) {
    if (*type == "qwen2") return Architecture::Qwen2;
    if (*type == "llama") return Architecture::Llama;
    fail("{}: field 'model_type' '{}' is not supported (supported: qwen2, llama)", f.source, *type);
  }
  // model_type is what transformers dispatches on; architectures only stands in when it is absent.
  if (const json* classes = f.find("architectures")) {
    LRSA_CHECK(classes->is_array() && classes->size() == 1 && (*classes)[0].is_string(),
               "{}: field 'architectures' must be a list of one class name, got {}", f.source,
               json_excerpt(*classes));
    const std::string name = (*classes)[0].get<std::string>();
    if (name == "Qwen2ForCausalLM") return Architecture::Qwen2;
    if (name == "LlamaForCausalLM") return Architecture::Llama;
    fail("{}: field 'architectures' '{}' is not supported (supported: Qwen2ForCausalLM, LlamaForCausalLM)",
         f.source, name);
  }
  fail("{}: field 'model_type' is required (qwen2 or llama)", f.source);
}

// One rope-scaling object: legacy rope_scaling ("rope_type", older files "type") or transformers 5
// rope_parameters, whose fields are the same.
RopeScaling parse_rope_scaling(const Fields& f) {
  const char* type_key = f.find("rope_type") != nullptr || f.find("type") == nullptr ? "rope_type" : "type";
  const std::string type = f.string(type_key).value_or("default");
  RopeScaling s;
  if (type == "default") return s;
  LRSA_CHECK(type == "llama3", "{}: {} '{}' is not supported (supported: default, llama3)", f.source, f.name(type_key),
             type);
  s.type = RopeType::Llama3;
  s.factor = f.required(f.number("factor"), "factor");
  s.low_freq_factor = f.required(f.number("low_freq_factor"), "low_freq_factor");
  s.high_freq_factor = f.required(f.number("high_freq_factor"), "high_freq_factor");
  s.original_max_position_embeddings =
      f.required(f.integer("original_max_position_embeddings"), "original_max_position_embeddings");
  return s;
}

void parse_rope(const Fields& top, ModelConfig& c) {
  const std::optional<double> legacy_theta = top.number("rope_theta");
  if (const json* params = top.find("rope_parameters")) {  // transformers 5
    LRSA_CHECK(params->is_object(), "{}: field 'rope_parameters' must be an object, got {}", top.source,
               json_excerpt(*params));
    const Fields p{*params, top.source, "rope_parameters."};
    // Per-layer-type parameter sets (sliding/full attention models) have no rope_type of their own.
    p.required(p.string("rope_type"), "rope_type");
    c.rope_scaling = parse_rope_scaling(p);
    const std::optional<double> theta = p.number("rope_theta");
    LRSA_CHECK(!theta || !legacy_theta || *theta == *legacy_theta,
               "{}: field 'rope_parameters.rope_theta' ({}) disagrees with field 'rope_theta' ({})", top.source,
               theta.value_or(0.0), legacy_theta.value_or(0.0));
    c.rope_theta = theta.value_or(legacy_theta.value_or(10000.0));
    return;
  }
  c.rope_theta = legacy_theta.value_or(10000.0);
  if (const json* scaling = top.find("rope_scaling")) {
    LRSA_CHECK(scaling->is_object(), "{}: field 'rope_scaling' must be an object or null, got {}", top.source,
               json_excerpt(*scaling));
    c.rope_scaling = parse_rope_scaling(Fields{*scaling, top.source, "rope_scaling."});
  }
}

// bos_token_id / eos_token_id: an int, a list of ints, or null.
std::vector<int64_t> parse_token_ids(const Fields& f, const char* key, std::vector<int64_t> fallback) {
  const auto it = f.obj.find(key);
  if (it == f.obj.end()) return fallback;
  if (it->is_null()) return {};
  if (!it->is_array()) return {*f.integer(key)};
  std::vector<int64_t> ids;
  for (const json& id : *it) {
    LRSA_CHECK(id.is_number_integer(), "{}: field '{}' must be an integer or a list of integers, got {}", f.source,
               f.name(key), json_excerpt(*it));
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

DType parse_torch_dtype(const Fields& f) {
  // transformers 5 writes "dtype"; earlier versions "torch_dtype".
  const char* key = f.find("dtype") != nullptr ? "dtype" : "torch_dtype";
  const std::string name = f.string(key).value_or("float32");
  if (name == "float32") return DType::F32;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  fail("{}: field '{}' '{}' is not supported (supported: float32, bfloat16, float16)", f.source, key, name);
}

// Rejects configuration switches that change the computation in ways this decoder does not have.
void reject_unsupported_features(const Fields& f, Architecture arch) {
  if (const auto act = f.string("hidden_act"))
    LRSA_CHECK(*act == "silu", "{}: field 'hidden_act' '{}' is not supported (supported: silu)", f.source, *act);
  if (const auto dropout = f.number("attention_dropout"))
    LRSA_CHECK(*dropout == 0.0, "{}: field 'attention_dropout' {} is not supported (the decoder has no dropout)",
               f.source, *dropout);
  if (arch == Architecture::Qwen2) {
    LRSA_CHECK(!f.boolean("use_sliding_window").value_or(false),
               "{}: field 'use_sliding_window' true is not supported (sliding-window attention)", f.source);
    if (const json* types = f.find("layer_types"))
      for (const json& t : *types)
        LRSA_CHECK(t == "full_attention", "{}: field 'layer_types' entry {} is not supported (supported: full_attention)",
                   f.source, json_excerpt(t));
  } else {
    LRSA_CHECK(!f.boolean("mlp_bias").value_or(false), "{}: field 'mlp_bias' true is not supported", f.source);
  }
}

json token_ids_json(const std::vector<int64_t>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: fail("model config: torch_dtype {} is not a floating checkpoint dtype", dtype_name(t));
  }
}

}  // namespace

std::string_view architecture_name(Architecture a) { return a == Architecture::Qwen2 ? "qwen2" : "llama"; }

ModelConfig parse_model_config(const json& j, std::string_view source) {
  LRSA_CHECK(j.is_object(), "{}: model config must be a JSON object, got {}", source, j.type_name());
  const Fields f{j, source, ""};
  ModelConfig c;
  c.architecture = parse_architecture(f);
  const bool qwen2 = c.architecture == Architecture::Qwen2;
  reject_unsupported_features(f, c.architecture);

  c.vocab_size = f.required(f.integer("vocab_size"), "vocab_size");
  c.hidden_size = f.required(f.integer("hidden_size"), "hidden_size");
  c.intermediate_size = f.required(f.integer("intermediate_size"), "intermediate_size");
  c.num_hidden_layers = f.required(f.integer("num_hidden_layers"), "num_hidden_layers");
  c.num_attention_heads = f.required(f.integer("num_attention_heads"), "num_attention_heads");
  // Defaults below are those of transformers' Qwen2Config / LlamaConfig.
  c.num_key_value_heads = f.integer("num_key_value_heads").value_or(c.num_attention_heads);
  if (const auto head_dim = f.integer("head_dim")) {
    c.head_dim = *head_dim;
  } else {
    LRSA_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0,
               "{}: field 'hidden_size' ({}) is not divisible by 'num_attention_heads' ({}); set 'head_dim'", source,
               c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = f.number("rms_norm_eps").value_or(1e-6);
  parse_rope(f, c);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings").value_or(false);
  // Qwen2 hard-codes q/k/v biases (its config has no such field); Llama reads attention_bias.
  c.attention_bias = qwen2 || f.boolean("attention_bias").value_or(false);
  c.max_position_embeddings = f.integer("max_position_embeddings").value_or(qwen2 ? 32768 : 2048);
  c.bos_token_ids = parse_token_ids(f, "bos_token_id", qwen2 ? std::vector<int64_t>{} : std::vector<int64_t>{1});
  c.eos_token_ids = parse_token_ids(f, "eos_token_id", qwen2 ? std::vector<int64_t>{} : std::vector<int64_t>{2});
  c.torch_dtype = parse_torch_dtype(f);
  validate_model_config(c, source);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& path) {
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  return parse_model_config(read_json_file(file), file.string());
}

void validate_model_config(const ModelConfig& c, std::string_view source) {
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
  };
  for (const auto& [field, value] : positive)
    LRSA_CHECK(value > 0, "{}: field '{}' must be positive, got {}", source, field, value);
  LRSA_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
             "{}: field 'num_key_value_heads' ({}) must divide 'num_attention_heads' ({})", source,
             c.num_key_value_heads, c.num_attention_heads);
  LRSA_CHECK(c.head_dim % 2 == 0, "{}: field 'head_dim' ({}) must be even for rotary embeddings", source, c.head_dim);
  LRSA_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0, "{}: field 'rms_norm_eps' must be positive, got {}",
             source, c.rms_norm_eps);
  LRSA_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, "{}: field 'rope_theta' must be positive, got {}",
             source, c.rope_theta);
  LRSA_CHECK(c.architecture == Architecture::Llama || c.attention_bias,
             "{}: qwen2 always has q/k/v biases (attention_bias must be true)", source);
  if (c.rope_scaling.type == RopeType::Llama3) {
    const RopeScaling& s = c.rope_scaling;
    LRSA_CHECK(s.factor >= 1.0, "{}: field 'rope_scaling.factor' must be >= 1, got {}", source, s.factor);
    LRSA_CHECK(s.low_freq_factor > 0, "{}: field 'rope_scaling.low_freq_factor' must be positive, got {}", source,
               s.low_freq_factor);
    LRSA_CHECK(s.high_freq_factor > s.low_freq_factor,
               "{}: field 'rope_scaling.high_freq_factor' ({}) must exceed 'low_freq_factor' ({})", source,
               s.high_freq_factor, s.low_freq_factor);
    LRSA_CHECK(s.original_max_position_embeddings > 0,
               "{}: field 'rope_scaling.original_max_position_embeddings' must be positive, got {}", source,
               s.original_max_position_embeddings);
  }
  for (const auto& [field, ids] : {std::pair{"bos_token_id", &c.bos_token_ids}, std::pair{"eos_token_id", &c.eos_token_ids}})
    for (int64_t id : *ids)
      LRSA_CHECK(id >= 0 && id < c.vocab_size, "{}: field '{}' {} is outside the vocabulary [0, {})", source, field,
                 id, c.vocab_size);
  LRSA_CHECK(is_floating(c.torch_dtype), "{}: field 'torch_dtype' must be a floating dtype, got {}", source,
             dtype_name(c.torch_dtype));
}

json model_config_to_hf_json(const ModelConfig& c) {
  const bool qwen2 = c.architecture == Architecture::Qwen2;
  json j = {
      {"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", architecture_name(c.architecture)},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_dropout", 0.0},
      {"initializer_range", 0.02},
      {"use_cache", true},
      {"bos_token_id", token_ids_json(c.bos_token_ids)},
      {"eos_token_id", token_ids_json(c.eos_token_ids)},
      {"torch_dtype", torch_dtype_name(c.torch_dtype)},
  };
  if (c.rope_scaling.type == RopeType::Llama3)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  if (qwen2) {
    j["use_sliding_window"] = false;
    j["sliding_window"] = c.max_position_embeddings;  // unused while use_sliding_window is false
    j["max_window_layers"] = c.num_hidden_layers;
  } else {
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  return j;
}

Tensor rope_inv_freq(const ModelConfig& c) {
  const Tensor unscaled = ops::rope_inv_freq(c.head_dim, c.rope_theta);  // [head_dim/2]
  if (c.rope_scaling.type == RopeType::Default) return unscaled.to(Device::cpu());
  Tensor inv_freq = unscaled.to(Device::cpu()).clone();

  // transformers' _compute_llama3_parameters, op by op: each torch op runs in fp32 with its Python
  // scalar operand rounded to fp32 (scalar / tensor is reciprocal(tensor) * scalar), so the same
  // sequence of fp32 operations here gives bit-identical frequencies.
  const RopeScaling& s = c.rope_scaling;
  const float factor = float(s.factor);
  const float low_freq_factor = float(s.low_freq_factor);
  const float old_context_len = float(s.original_max_position_embeddings);
  const float low_freq_wavelen = float(double(s.original_max_position_embeddings) / s.low_freq_factor);
  const float high_freq_wavelen = float(double(s.original_max_position_embeddings) / s.high_freq_factor);
  const float band = float(s.high_freq_factor - s.low_freq_factor);
  const float two_pi = float(2 * std::numbers::pi);
  float* f = inv_freq.data_as<float>();
  for (int64_t i = 0; i < inv_freq.numel(); ++i) {
    const float base = f[i];
    const float wavelen = (1.0f / base) * two_pi;
    // Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
    float scaled = wavelen > low_freq_wavelen ? base / factor : base;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = ((1.0f / wavelen) * old_context_len - low_freq_factor) / band;
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f[i] = scaled;
  }
  return inv_freq;
}

}  // namespace lrsa::model
