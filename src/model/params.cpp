#include "lrsa/model/params.h"

#include "lrsa/model/hf_export.h"

namespace lrsa::model {

namespace {
int64_t qkv_rows(const ModelConfig& c) { return c.q_dim() + 2 * c.kv_dim(); }
}  // namespace

std::vector<ParamEntry> parameter_layout(const ModelConfig& c) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  std::vector<ParamEntry> entries;
  int64_t offset = 0;
  auto add = [&](std::string name, Shape shape) {
    const int64_t n = shape_numel(shape);
    entries.push_back({std::move(name), std::move(shape), offset});
    offset += n;
  };
  add("embed", {V, C});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    add(p + "input_norm", {C});
    add(p + "qkv_w", {qkv_rows(c), C});
    if (c.attention_bias) add(p + "qkv_b", {qkv_rows(c)});
    add(p + "o_w", {C, c.q_dim()});
    if (c.has_o_proj_bias()) add(p + "o_b", {C});
    add(p + "post_norm", {C});
    add(p + "gate_up_w", {2 * F, C});
    add(p + "down_w", {C, F});
  }
  add("final_norm", {C});
  if (!c.tie_word_embeddings) add("lm_head", {V, C});
  return entries;
}

int64_t parameter_count(const ModelConfig& c) {
  const auto layout = parameter_layout(c);
  return layout.back().offset + shape_numel(layout.back().shape);
}

ParamSet make_param_set(const ModelConfig& c, DType dtype, Device device) {
  ParamSet set;
  set.flat = Tensor::zeros({parameter_count(c)}, dtype, device);
  set.layers.resize(size_t(c.num_hidden_layers));
  for (const ParamEntry& e : parameter_layout(c)) {
    Tensor view = set.flat.slice(0, e.offset, e.offset + shape_numel(e.shape)).view(e.shape);
    if (e.name == "embed") { set.embed = view; continue; }
    if (e.name == "final_norm") { set.final_norm = view; continue; }
    if (e.name == "lm_head") { set.lm_head = view; continue; }
    // "layers.<l>.<field>"
    const size_t dot = e.name.find('.', 7);
    LayerParams& layer = set.layers[size_t(std::stoll(e.name.substr(7, dot - 7)))];
    const std::string field = e.name.substr(dot + 1);
    Tensor* slot = field == "input_norm" ? &layer.input_norm
                 : field == "qkv_w"      ? &layer.qkv_w
                 : field == "qkv_b"      ? &layer.qkv_b
                 : field == "o_w"        ? &layer.o_w
                 : field == "o_b"        ? &layer.o_b
                 : field == "post_norm"  ? &layer.post_norm
                 : field == "gate_up_w"  ? &layer.gate_up_w
                                         : &layer.down_w;
    *slot = view;
  }
  if (c.tie_word_embeddings) set.lm_head = set.embed;
  return set;
}

void init_params(ParamSet& params, const ModelConfig& c, uint64_t seed, float std) {
  const auto layout = parameter_layout(c);
  for (size_t i = 0; i < layout.size(); ++i) {
    const ParamEntry& e = layout[i];
    Tensor view = params.flat.slice(0, e.offset, e.offset + shape_numel(e.shape));
    const bool is_norm = e.name.ends_with("norm");
    const bool is_bias = e.name.ends_with("_b");
    if (is_norm) {
      view.fill_(1.0);
    } else if (is_bias) {
      view.fill_(0.0);
    } else {
      view.copy_(Tensor::normal(view.shape(), seed, uint64_t(i), 0.0f, std, params.flat.dtype(), params.flat.device()));
    }
  }
}

TensorMap hf_views(const ParamSet& params, const ModelConfig& c) {
  TensorMap views;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), F = c.intermediate_size;
  views["model.embed_tokens.weight"] = params.embed;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerParams& p = params.layers[size_t(l)];
    const std::string a = fmt::format("model.layers.{}.self_attn.", l);
    const std::string m = fmt::format("model.layers.{}.mlp.", l);
    views[a + "q_proj.weight"] = p.qkv_w.slice(0, 0, qd);
    views[a + "k_proj.weight"] = p.qkv_w.slice(0, qd, qd + kvd);
    views[a + "v_proj.weight"] = p.qkv_w.slice(0, qd + kvd, qd + 2 * kvd);
    if (p.qkv_b.defined()) {
      views[a + "q_proj.bias"] = p.qkv_b.slice(0, 0, qd);
      views[a + "k_proj.bias"] = p.qkv_b.slice(0, qd, qd + kvd);
      views[a + "v_proj.bias"] = p.qkv_b.slice(0, qd + kvd, qd + 2 * kvd);
    }
    views[a + "o_proj.weight"] = p.o_w;
    if (p.o_b.defined()) views[a + "o_proj.bias"] = p.o_b;
    views[m + "gate_proj.weight"] = p.gate_up_w.slice(0, 0, F);
    views[m + "up_proj.weight"] = p.gate_up_w.slice(0, F, 2 * F);
    views[m + "down_proj.weight"] = p.down_w;
    views[fmt::format("model.layers.{}.input_layernorm.weight", l)] = p.input_norm;
    views[fmt::format("model.layers.{}.post_attention_layernorm.weight", l)] = p.post_norm;
  }
  views["model.norm.weight"] = params.final_norm;
  if (!c.tie_word_embeddings) views["lm_head.weight"] = params.lm_head;
  return views;
}

void load_hf_weights(ParamSet& params, const ModelConfig& c, const TensorMap& checkpoint, std::string_view source) {
  check_hf_tensors(c, checkpoint, source, /*allow_unexpected=*/true);
  for (auto& [name, view] : hf_views(params, c)) {
    Tensor target = view;
    target.copy_(checkpoint.at(name));
  }
}

}  // namespace lrsa::model
