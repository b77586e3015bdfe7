// Run configuration: one schema (`schema` below) drives parsing, range checks, dumping and the
// list of known keys used for "did you mean" suggestions, so a field is declared exactly once.
#include "lrsa/train/config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <sstream>
#include <utility>

namespace lrsa::train {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

constexpr double kInf = std::numeric_limits<double>::infinity();
// Token counts are bounded so that products such as micro_batch_tokens * world size cannot
// overflow int64 (2^40 tokens is far beyond any real batch or sequence).
constexpr double kMaxTokens = double(int64_t(1) << 40);
constexpr int kMaxWorldSize = 1 << 20;

template <typename... Args>
[[noreturn]] void config_fail(const std::string& path, fmt::format_string<Args...> format, Args&&... args) {
  const std::string message = fmt::format(format, std::forward<Args>(args)...);
  throw ConfigError(path, path.empty() ? message : path + ": " + message);
}

// ---- Names of enum values as written in JSON ---------------------------------------------------

template <typename E>
struct Choice {
  E value;
  std::string_view name;
};

constexpr Choice<Architecture> kArchitectures[] = {{Architecture::Qwen2, "qwen2"}, {Architecture::Llama, "llama"}};
constexpr Choice<WeightDType> kWeightDTypes[] = {
    {WeightDType::Auto, "auto"}, {WeightDType::BF16, "bf16"}, {WeightDType::F16, "f16"}, {WeightDType::F32, "f32"}};
constexpr Choice<ChatTemplate> kChatTemplates[] = {
    {ChatTemplate::Auto, "auto"}, {ChatTemplate::Qwen, "qwen"}, {ChatTemplate::Llama3, "llama3"}};
constexpr Choice<DataFormat> kDataFormats[] = {
    {DataFormat::Chat, "chat"}, {DataFormat::Qa, "qa"}, {DataFormat::Tokenized, "tokenized"}};
constexpr Choice<TruncateSide> kTruncateSides[] = {{TruncateSide::Left, "left"}, {TruncateSide::Right, "right"}};
constexpr Choice<attn::Mode> kModes[] = {{attn::Mode::Dense, "dense"}, {attn::Mode::Lrsa, "lrsa"}};
constexpr auto kAttnBackends = [] {
  std::array<Choice<attn::Backend>, std::size(attn::kBackendNames)> choices{};
  for (size_t i = 0; i < choices.size(); ++i)
    choices[i] = {attn::kBackendNames[i].backend, attn::kBackendNames[i].name};
  return choices;
}();
constexpr Choice<Decay> kDecays[] = {{Decay::Cosine, "cosine"}, {Decay::Linear, "linear"}, {Decay::Constant, "constant"}};
constexpr Choice<DType> kParamDTypes[] = {{DType::BF16, "bf16"}, {DType::F32, "f32"}};
constexpr Choice<Checkpointing> kCheckpointings[] = {
    {Checkpointing::None, "none"}, {Checkpointing::All, "all"}, {Checkpointing::EveryN, "every_n"}};
constexpr Choice<Progress> kProgresses[] = {{Progress::Auto, "auto"}, {Progress::Bar, "bar"}, {Progress::Plain, "plain"}};
constexpr Choice<Backend> kBackends[] = {
    {Backend::Auto, "auto"}, {Backend::Nccl, "nccl"}, {Backend::MpiCpu, "mpi_cpu"}, {Backend::None, "none"}};
constexpr Choice<DeviceChoice> kDevices[] = {
    {DeviceChoice::Auto, "auto"}, {DeviceChoice::Cpu, "cpu"}, {DeviceChoice::Cuda, "cuda"}};

std::span<const Choice<Architecture>> choices(Architecture) { return kArchitectures; }
std::span<const Choice<WeightDType>> choices(WeightDType) { return kWeightDTypes; }
std::span<const Choice<ChatTemplate>> choices(ChatTemplate) { return kChatTemplates; }
std::span<const Choice<DataFormat>> choices(DataFormat) { return kDataFormats; }
std::span<const Choice<TruncateSide>> choices(TruncateSide) { return kTruncateSides; }
std::span<const Choice<attn::Mode>> choices(attn::Mode) { return kModes; }
std::span<const Choice<attn::Backend>> choices(attn::Backend) { return kAttnBackends; }
std::span<const Choice<Decay>> choices(Decay) { return kDecays; }
std::span<const Choice<DType>> choices(DType) { return kParamDTypes; }
std::span<const Choice<Checkpointing>> choices(Checkpointing) { return kCheckpointings; }
std::span<const Choice<Progress>> choices(Progress) { return kProgresses; }
std::span<const Choice<Backend>> choices(Backend) { return kBackends; }
std::span<const Choice<DeviceChoice>> choices(DeviceChoice) { return kDevices; }

template <typename E>
std::string_view choice_name(E value) {
  for (const Choice<E>& c : choices(value))
    if (c.value == value) return c.name;
  fail("config: enum value {} has no name in the config schema", int(value));
}

template <typename E>
std::string choice_list(E value) {
  std::string list;
  for (const Choice<E>& c : choices(value)) list += (list.empty() ? "" : ", ") + std::string(c.name);
  return list;
}

// ---- "Did you mean": case-insensitive Levenshtein distance -------------------------------------

size_t edit_distance(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return char(std::tolower(static_cast<unsigned char>(c))); };
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = diagonal + (lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

// Close enough to suggest: about one edit in three characters, at least one. Returns the
// distance, or SIZE_MAX when too far (the length gap alone rules most candidates out cheaply).
size_t suggestion_distance(std::string_view typed, std::string_view candidate) {
  const size_t limit = std::max<size_t>(1, std::max(typed.size(), candidate.size()) / 3);
  const size_t gap = typed.size() > candidate.size() ? typed.size() - candidate.size() : candidate.size() - typed.size();
  if (gap > limit) return SIZE_MAX;
  const size_t d = edit_distance(typed, candidate);
  return d <= limit ? d : SIZE_MAX;
}

std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(' ', start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) words.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return words;
}

// A JSON value in an error message: short, never a whole document.
std::string describe(const json& j) {
  switch (j.type()) {
    case json::value_t::object: return "an object";
    case json::value_t::array: return fmt::format("a list of {}", j.size());
    case json::value_t::null: return "null";
    case json::value_t::string: {
      const std::string& s = j.get_ref<const std::string&>();
      constexpr size_t kShown = 60;
      // Quoted and escaped as JSON; a UTF-8 sequence cut by the truncation is replaced, not thrown on.
      return json(s.size() > kShown ? s.substr(0, kShown) + "..." : s).dump(-1, ' ', false, json::error_handler_t::replace);
    }
    default: return j.dump();
  }
}

// ---- Field rules -----------------------------------------------------------------------------

struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;

  bool contains(double x) const { return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi); }
  std::string describe() const {
    if (lo > -kInf && hi < kInf) return fmt::format("in {}{}, {}{}", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
    if (lo > -kInf) return fmt::format("{} {}", lo_open ? ">" : ">=", lo);
    return fmt::format("{} {}", hi_open ? "<" : "<=", hi);
  }
};
constexpr Range at_least(double lo) { return {lo, kInf, false, false}; }
constexpr Range above(double lo) { return {lo, kInf, true, false}; }
constexpr Range closed(double lo, double hi) { return {lo, hi, false, false}; }

struct Rule {
  bool required = false;  // strings: also non-empty; lists: at least one entry
  Range range = {};       // numbers
  std::string_view aliases = {};  // space-separated names people may use for this key
};

// ---- The schema: every key, its struct field, rule and place --------------------------------
// V is a visitor with field(key, value, rule), section(key, aliases, body) and
// group(optional, description, conflicting_key, body(value)). C is RunConfig, const or not.

template <typename V, typename C>
void schema(V& v, C& c) {
  v.field("output_dir", c.output_dir, {.required = true, .aliases = "out_dir output output_path"});
  v.section("model", "", [&] {
    v.field("path", c.model.path, {.aliases = "model_path name_or_path pretrained dir"});
    v.group(c.model.arch, "an inline architecture", "path", [&](auto& a) {
      v.field("architecture", a.architecture, {.aliases = "arch model_type"});
      v.field("vocab_size", a.vocab_size, {.required = true, .range = at_least(1)});
      v.field("hidden_size", a.hidden_size, {.required = true, .range = at_least(1), .aliases = "d_model dim"});
      v.field("intermediate_size", a.intermediate_size, {.required = true, .range = at_least(1), .aliases = "ffn_dim"});
      v.field("num_hidden_layers", a.num_hidden_layers, {.required = true, .range = at_least(1), .aliases = "num_layers n_layers layers"});
      v.field("num_attention_heads", a.num_attention_heads, {.required = true, .range = at_least(1), .aliases = "num_heads n_heads heads"});
      v.field("num_key_value_heads", a.num_key_value_heads, {.range = at_least(0), .aliases = "num_kv_heads n_kv_heads kv_heads"});
      v.field("head_dim", a.head_dim, {.range = at_least(0)});
      v.field("rms_norm_eps", a.rms_norm_eps, {.range = above(0), .aliases = "norm_eps eps"});
      v.field("rope_theta", a.rope_theta, {.range = above(0), .aliases = "rope_base"});
      v.field("tie_word_embeddings", a.tie_word_embeddings, {.aliases = "tie_embeddings"});
      v.field("attention_bias", a.attention_bias, {.aliases = "qkv_bias bias"});
      v.field("max_position_embeddings", a.max_position_embeddings, {.range = at_least(1)});
    });
    v.field("dtype", c.model.dtype, {.aliases = "torch_dtype weight_dtype"});
  });
  v.section("tokenizer", "tok", [&] {
    v.field("path", c.tokenizer.path, {.aliases = "tokenizer_path file"});
    v.field("chat_template", c.tokenizer.chat_template, {.aliases = "template chat_format"});
  });
  v.section("data", "dataset datasets", [&] {
    v.field("train", c.data.train, {.required = true, .aliases = "train_files train_file"});
    v.field("eval", c.data.eval, {.aliases = "eval_files eval_file valid validation"});
    v.field("format", c.data.format);
    v.field("prompt_template", c.data.prompt_template, {.aliases = "template prompt"});
    v.field("max_seq_len", c.data.max_seq_len,
            {.range = closed(2, kMaxTokens), .aliases = "seq_len max_length max_seq_length context_length"});
    v.field("truncate_side", c.data.truncate_side, {.aliases = "truncation_side truncation"});
    v.field("skip_bad_lines", c.data.skip_bad_lines);
    v.field("shuffle", c.data.shuffle);
  });
  v.section("attention", "attn", [&] {
    v.field("mode", c.attention.mode, {.aliases = "type kind"});
    v.field("backend", c.attention.backend, {.aliases = "impl implementation kernels"});
    v.field("sink", c.attention.lrsa.sink, {.range = closed(0, kMaxTokens), .aliases = "sinks sink_tokens num_sink"});
    v.field("lag", c.attention.lrsa.lag, {.range = closed(1, kMaxTokens), .aliases = "lag_size partition partition_size"});
    v.field("ratio", c.attention.lrsa.ratio, {.range = {0, 1, true, false}, .aliases = "keep_ratio r"});
    v.field("score_v_ratio", c.attention.lrsa.score_v_ratio, {.range = at_least(0), .aliases = "lambda v_ratio"});
    v.field("cudnn_gather_gib", c.attention.cudnn_gather_gib,
            {.range = {0, attn::kMaxCudnnGatherGib, true, false}, .aliases = "gather_gib gather_budget_gib"});
  });
  v.section("optim", "optimizer adamw optimiser", [&] {
    v.field("lr", c.optim.lr, {.range = above(0), .aliases = "learning_rate"});
    v.field("beta1", c.optim.beta1, {.range = {0, 1, false, true}, .aliases = "adam_beta1"});
    v.field("beta2", c.optim.beta2, {.range = {0, 1, false, true}, .aliases = "adam_beta2"});
    v.field("eps", c.optim.eps, {.range = above(0), .aliases = "epsilon adam_epsilon adam_eps"});
    v.field("weight_decay", c.optim.weight_decay, {.range = at_least(0), .aliases = "wd"});
    v.field("grad_clip", c.optim.grad_clip, {.range = at_least(0), .aliases = "max_grad_norm clip_grad_norm gradient_clipping"});
  });
  v.section("schedule", "scheduler lr_schedule", [&] {
    v.field("warmup_steps", c.schedule.warmup_steps, {.range = at_least(0), .aliases = "warmup"});
    v.field("decay", c.schedule.decay, {.aliases = "lr_decay decay_type"});
    v.field("min_lr_ratio", c.schedule.min_lr_ratio, {.range = closed(0, 1), .aliases = "min_lr final_lr_ratio"});
    v.field("max_steps", c.schedule.max_steps, {.range = at_least(0), .aliases = "steps total_steps train_steps"});
    v.field("epochs", c.schedule.epochs, {.range = at_least(0), .aliases = "num_epochs num_train_epochs"});
  });
  v.section("batch", "batching", [&] {
    v.field("tokens_per_step", c.batch.tokens_per_step,
            {.range = closed(0, kMaxTokens), .aliases = "global_batch_tokens batch_tokens tokens"});
    v.field("micro_batch_tokens", c.batch.micro_batch_tokens,
            {.range = closed(0, kMaxTokens), .aliases = "micro_batch micro_batch_size micro_tokens"});
  });
  v.section("precision", "", [&] {
    v.field("param_dtype", c.precision.param_dtype, {.aliases = "dtype"});
    v.field("deterministic", c.precision.deterministic);
  });
  v.section("memory", "", [&] {
    v.field("activation_checkpointing", c.memory.activation_checkpointing,
            {.aliases = "checkpointing gradient_checkpointing recompute"});
    v.field("every", c.memory.every, {.range = at_least(1), .aliases = "every_n interval"});
  });
  v.section("checkpoint", "checkpoints checkpointing ckpt save", [&] {
    v.field("every_steps", c.checkpoint.every_steps, {.range = at_least(0), .aliases = "every interval save_steps"});
    v.field("keep_last", c.checkpoint.keep_last, {.range = at_least(0), .aliases = "keep save_total_limit"});
    v.field("dir", c.checkpoint.dir, {.aliases = "path directory"});
  });
  v.section("logging", "log", [&] {
    v.field("every_steps", c.logging.every_steps, {.range = at_least(1), .aliases = "every interval log_steps"});
    v.field("progress", c.logging.progress, {.aliases = "progress_bar"});
    v.field("metrics_file", c.logging.metrics_file, {.aliases = "metrics metrics_path"});
  });
  v.section("distributed", "dist ddp", [&] {
    v.field("backend", c.distributed.backend);
    v.field("zero1", c.distributed.zero1, {.aliases = "zero shard_optimizer"});
    v.field("bucket_mb", c.distributed.bucket_mb, {.range = closed(1, 1 << 20), .aliases = "bucket_size bucket_size_mb"});
    v.field("timeout_s", c.distributed.timeout_s, {.range = closed(1, 86400), .aliases = "timeout collective_timeout"});
  });
  v.field("seed", c.seed, {.range = at_least(0), .aliases = "random_seed"});
  v.field("device", c.device);
  v.section("eval", "evaluation", [&] {
    v.field("every_steps", c.eval.every_steps, {.range = at_least(0), .aliases = "every interval eval_steps"});
    v.field("max_samples", c.eval.max_samples, {.range = at_least(0), .aliases = "samples num_samples"});
  });
}

// ---- Known keys (for suggestions) -----------------------------------------------------------

struct KnownKey {
  std::string parent;  // "optim." ("" at the top level)
  std::string name;    // "lr"
  std::string_view aliases;
  std::string path() const { return parent + name; }
};

class KeyCollector {
 public:
  std::vector<KnownKey> keys;

  template <typename T>
  void field(std::string_view key, const T&, const Rule& rule = {}) {
    keys.push_back({prefix_, std::string(key), rule.aliases});
  }
  template <typename Body>
  void section(std::string_view key, std::string_view aliases, Body&& body) {
    keys.push_back({prefix_, std::string(key), aliases});
    const std::string saved = prefix_;
    prefix_ += std::string(key) + ".";
    body();
    prefix_ = saved;
  }
  template <typename Opt, typename Body>
  void group(const Opt&, std::string_view, std::string_view, Body&& body) {
    typename Opt::value_type probe{};
    body(probe);
  }

 private:
  std::string prefix_;
};

const std::vector<KnownKey>& known_keys() {
  static const std::vector<KnownKey> keys = [] {
    KeyCollector collector;
    const RunConfig config;
    schema(collector, config);
    return collector.keys;
  }();
  return keys;
}

// The closest known key to `typed`: first among its siblings (names and aliases), then anywhere
// (a key put in the wrong section, or a dotted path written as one key).
std::string suggest_key(const std::string& parent, std::string_view typed) {
  const KnownKey* best = nullptr;
  size_t best_distance = SIZE_MAX;
  const auto consider = [&](const KnownKey& k, std::string_view candidate) {
    const size_t d = suggestion_distance(typed, candidate);
    if (d < best_distance) best = &k, best_distance = d;
  };
  for (const KnownKey& k : known_keys()) {
    if (k.parent != parent) continue;
    consider(k, k.name);
    for (std::string_view alias : split_words(k.aliases)) consider(k, alias);
  }
  if (!best) {
    for (const KnownKey& k : known_keys()) {
      consider(k, k.name);
      consider(k, k.path());
      for (std::string_view alias : split_words(k.aliases)) consider(k, alias);
    }
  }
  if (best) return fmt::format("did you mean '{}'?", best->path());
  std::string names;
  for (const KnownKey& k : known_keys())
    if (k.parent == parent) names += (names.empty() ? "" : ", ") + k.name;
  return fmt::format("valid keys {}: {}", parent.empty() ? "at the top level" : "in '" + parent.substr(0, parent.size() - 1) + "'", names);
}

// ---- Reading JSON into the struct --------------------------------------------------------------

void read_value(const json& j, const std::string& path, int64_t& out) {
  if (j.is_number_unsigned()) {
    if (j.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      config_fail(path, "expected an integer, got {} (too large)", describe(j));
    out = int64_t(j.get<uint64_t>());
  } else if (j.is_number_integer()) {
    out = j.get<int64_t>();
  } else if (j.is_number_float() && std::floor(j.get<double>()) == j.get<double>() &&
             j.get<double>() >= -9223372036854775808.0 && j.get<double>() < 9223372036854775808.0) {
    out = int64_t(j.get<double>());  // 1e5 and 1000.0 are integers written as floats
  } else {
    config_fail(path, "expected an integer, got {}", describe(j));
  }
}

void read_value(const json& j, const std::string& path, double& out) {
  if (!j.is_number()) config_fail(path, "expected a number, got {}", describe(j));
  out = j.get<double>();
}

void read_value(const json& j, const std::string& path, float& out) {
  double d = 0;
  read_value(j, path, d);
  if (std::abs(d) > double(std::numeric_limits<float>::max()))
    config_fail(path, "expected a number that fits a 32-bit float, got {}", describe(j));
  out = float(d);
}

void read_value(const json& j, const std::string& path, bool& out) {
  if (!j.is_boolean()) config_fail(path, "expected true or false, got {}", describe(j));
  out = j.get<bool>();
}

void read_value(const json& j, const std::string& path, std::optional<bool>& out) {
  bool b = false;
  read_value(j, path, b);
  out = b;
}

void read_value(const json& j, const std::string& path, std::string& out) {
  if (!j.is_string()) config_fail(path, "expected a string, got {}", describe(j));
  out = j.get<std::string>();
}

// A file or a list of files.
void read_value(const json& j, const std::string& path, std::vector<std::string>& out) {
  out.clear();
  if (j.is_string()) {
    out.push_back(j.get<std::string>());
    return;
  }
  if (!j.is_array()) config_fail(path, "expected a file path or a list of file paths, got {}", describe(j));
  for (size_t i = 0; i < j.size(); ++i) {
    std::string file;
    read_value(j[i], fmt::format("{}[{}]", path, i), file);
    out.push_back(std::move(file));
  }
}

template <typename E>
  requires std::is_enum_v<E>
void read_value(const json& j, const std::string& path, E& out) {
  if (!j.is_string()) config_fail(path, "expected one of {}, got {}", choice_list(out), describe(j));
  const std::string& text = j.get_ref<const std::string&>();
  std::string_view closest;
  size_t closest_distance = SIZE_MAX;
  for (const Choice<E>& c : choices(out)) {
    if (c.name == text) {
      out = c.value;
      return;
    }
    const size_t d = suggestion_distance(text, c.name);
    if (d < closest_distance) closest = c.name, closest_distance = d;
  }
  if (closest.empty()) config_fail(path, "must be one of {}, got {}", choice_list(out), describe(j));
  config_fail(path, "must be one of {}, got {} (did you mean \"{}\"?)", choice_list(out), describe(j), closest);
}

[[noreturn]] void fail_model_path_and_inline(std::string_view inline_key) {
  config_fail("model", "set either 'path' (an HF model directory) or an inline architecture, not both (found 'path' and '{}')",
              inline_key);
}

class Reader {
 public:
  explicit Reader(const json& root) { frames_.push_back({&root, "", {}}); }

  template <typename T>
  void field(std::string_view key, T& value, const Rule& rule = {}) {
    Frame& f = frames_.back();
    f.known.push_back(key);
    const auto it = f.object->find(key);
    if (probing_) {
      if (it != f.object->end() && probe_hit_.empty()) probe_hit_ = key;
      return;
    }
    const std::string path = f.prefix + std::string(key);
    if (it == f.object->end()) {
      if (rule.required) config_fail(path, "required{}", group_.empty() ? "" : " by " + std::string(group_));
      return;
    }
    read_value(*it, path, value);
  }

  template <typename Body>
  void section(std::string_view key, std::string_view, Body&& body) {
    Frame& f = frames_.back();
    f.known.push_back(key);
    const std::string path = f.prefix + std::string(key);
    static const json kEmpty = json::object();
    const auto it = f.object->find(key);
    if (it != f.object->end() && !it->is_object())
      config_fail(path, "expected an object (a section of keys), got {}", describe(*it));
    frames_.push_back({it == f.object->end() ? &kEmpty : &*it, path + ".", {}});
    body();
    check_unknown_keys();
    frames_.pop_back();
  }

  // A group of keys that is present as a whole or not at all (the inline architecture); it
  // excludes `conflicting_key` of the same section.
  template <typename S, typename Body>
  void group(std::optional<S>& value, std::string_view description, std::string_view conflicting_key, Body&& body) {
    S probe{};
    probing_ = true;
    probe_hit_ = {};
    body(probe);
    probing_ = false;
    if (probe_hit_.empty()) return;
    const json& object = *frames_.back().object;
    const auto conflict = object.find(conflicting_key);
    if (conflict != object.end() && *conflict != "") fail_model_path_and_inline(probe_hit_);  // "" = not set
    group_ = description;
    body(value.emplace());
    group_ = {};
  }

  // Unknown keys of the top level (sections check theirs when they close).
  void finish() { check_unknown_keys(); }

 private:
  struct Frame {
    const json* object;
    std::string prefix;
    std::vector<std::string_view> known;
  };

  void check_unknown_keys() const {
    const Frame& f = frames_.back();
    for (const auto& [key, value] : f.object->items()) {
      if (std::find(f.known.begin(), f.known.end(), key) != f.known.end()) continue;
      throw ConfigError(f.prefix + key, fmt::format("unknown key '{}{}' ({})", f.prefix, key, suggest_key(f.prefix, key)));
    }
  }

  std::vector<Frame> frames_;
  bool probing_ = false;
  std::string_view probe_hit_;  // first key of the probed group present in the JSON
  std::string_view group_;      // description of the group being read, for "required by ..."
};

// ---- Writing the struct as JSON -------------------------------------------------------------

ordered_json to_json_value(int64_t v) { return v; }
ordered_json to_json_value(double v) { return v; }
// A float printed with its shortest decimal form (0.1, not 0.10000000149011612), which reads back
// to the same float. from_chars, unlike stod, ignores the C locale.
ordered_json to_json_value(float v) {
  const std::string text = fmt::format("{}", v);
  double d = 0;
  std::from_chars(text.data(), text.data() + text.size(), d);
  return d;
}
ordered_json to_json_value(bool v) { return v; }
ordered_json to_json_value(const std::optional<bool>& v) { return v ? ordered_json(*v) : ordered_json(); }
ordered_json to_json_value(const std::string& v) { return v; }
ordered_json to_json_value(const std::vector<std::string>& v) {
  return v.size() == 1 ? ordered_json(v[0]) : ordered_json(v);
}
template <typename E>
  requires std::is_enum_v<E>
ordered_json to_json_value(E v) {
  return std::string(choice_name(v));
}

class Writer {
 public:
  explicit Writer(ordered_json& root) { stack_.push_back(&root); }

  template <typename T>
  void field(std::string_view key, const T& value, const Rule& = {}) {
    ordered_json encoded = to_json_value(value);
    if (!encoded.is_null()) (*stack_.back())[std::string(key)] = std::move(encoded);
  }
  template <typename Body>
  void section(std::string_view key, std::string_view, Body&& body) {
    ordered_json& sub = (*stack_.back())[std::string(key)] = ordered_json::object();
    stack_.push_back(&sub);
    body();
    stack_.pop_back();
  }
  template <typename Opt, typename Body>
  void group(const Opt& value, std::string_view, std::string_view, Body&& body) {
    if (value) body(*value);
  }

 private:
  std::vector<ordered_json*> stack_;
};

// ---- Per-field checks (ranges, required values) ------------------------------------------------

class FieldChecker {
 public:
  template <typename T>
  void field(std::string_view key, const T& value, const Rule& rule = {}) {
    const std::string path = prefix_ + std::string(key);
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      if (!rule.range.contains(double(value))) config_fail(path, "must be {}, got {}", rule.range.describe(), value);
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (rule.required && value.empty()) config_fail(path, "must not be empty");
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      if (rule.required && value.empty()) config_fail(path, "must name at least one file");
      for (size_t i = 0; i < value.size(); ++i)
        if (value[i].empty()) config_fail(fmt::format("{}[{}]", path, i), "must not be empty");
    }
  }
  template <typename Body>
  void section(std::string_view key, std::string_view, Body&& body) {
    const std::string saved = prefix_;
    prefix_ += std::string(key) + ".";
    body();
    prefix_ = saved;
  }
  template <typename Opt, typename Body>
  void group(const Opt& value, std::string_view, std::string_view, Body&& body) {
    if (value) body(*value);
  }

 private:
  std::string prefix_;
};

// ---- Derived defaults and cross-field rules -------------------------------------------------

// The two multiples of `unit` around `value`, for "use A or B" hints.
std::string nearest_multiples(int64_t value, int64_t unit) {
  const int64_t below = value / unit * unit;
  return below == 0 ? fmt::format("{}", unit) : fmt::format("{} or {}", below, below + unit);
}

void finalize_model(RunConfig& c) {
  ModelConfig& m = c.model;
  if (!m.path.empty() && m.arch) fail_model_path_and_inline("architecture");
  if (m.path.empty() && !m.arch)
    config_fail("model",
                "set 'path' to an HF model directory, or describe the model inline (architecture, vocab_size, "
                "hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ...)");
  if (!m.arch) return;
  InlineArchitecture& a = *m.arch;
  if (a.num_key_value_heads == 0) a.num_key_value_heads = a.num_attention_heads;
  if (a.num_attention_heads % a.num_key_value_heads != 0)
    config_fail("model.num_key_value_heads", "must divide model.num_attention_heads = {} (grouped-query attention), got {}",
                a.num_attention_heads, a.num_key_value_heads);
  if (a.head_dim == 0) {
    if (a.hidden_size % a.num_attention_heads != 0)
      config_fail("model.hidden_size",
                  "must be a multiple of model.num_attention_heads = {} when model.head_dim is not set, got {}",
                  a.num_attention_heads, a.hidden_size);
    a.head_dim = a.hidden_size / a.num_attention_heads;
  }
  if (a.head_dim % 2 != 0)
    config_fail("model.head_dim", "must be even (rotary embeddings rotate pairs of channels), got {}", a.head_dim);
  // Qwen2 has q/k/v biases by construction (HF has no switch for them).
  if (!a.attention_bias) a.attention_bias = a.architecture == Architecture::Qwen2;
  if (a.architecture == Architecture::Qwen2 && !*a.attention_bias)
    config_fail("model.attention_bias", "qwen2 always has q/k/v biases; false needs architecture llama");
}

void finalize_tokenizer(RunConfig& c) {
  std::string& path = c.tokenizer.path;
  if (path.empty()) {
    if (c.model.path.empty())
      config_fail("tokenizer.path",
                  "required when the model is given inline (a tokenizer.json, an HF directory, or \"builtin:bytes\")");
    path = c.model.path;
  }
  constexpr std::string_view kBuiltin = "builtin:", kBytes = "builtin:bytes";
  if (path.starts_with(kBuiltin) && path != kBytes)
    config_fail("tokenizer.path", "unknown built-in tokenizer '{}' (available: {})", path, kBytes);
  // The byte tokenizer (data/tokenizer.h) has ids 0-255 for the bytes and 256-258 for
  // <|endoftext|>, <|im_start|>, <|im_end|>; the embedding must have a row for each.
  constexpr int64_t kByteTokenizerVocab = 259;
  if (path == kBytes && c.model.arch && c.model.arch->vocab_size < kByteTokenizerVocab)
    config_fail("model.vocab_size", "must be >= {} for the builtin:bytes tokenizer (256 bytes + 3 special tokens), got {}",
                kByteTokenizerVocab, c.model.arch->vocab_size);
}

// QA prompts substitute {context} and {question}; any other {word} is a typo.
void check_prompt_template(const std::string& text) {
  bool has_context = false, has_question = false;
  for (size_t open = text.find('{'); open != std::string::npos; open = text.find('{', open + 1)) {
    const size_t close = text.find('}', open);
    if (close == std::string::npos) break;
    const std::string_view name = std::string_view(text).substr(open + 1, close - open - 1);
    const bool word = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
    });
    if (!word) continue;  // JSON examples and other braces stay literal
    if (name == "context") has_context = true;
    else if (name == "question") has_question = true;
    else config_fail("data.prompt_template", "unknown placeholder {{{}}} (available: {{context}}, {{question}})", name);
  }
  if (!has_context || !has_question)
    config_fail("data.prompt_template", "must contain {{context}} and {{question}} for data.format qa, missing {}",
                !has_context ? "{context}" : "{question}");
}

bool runs_on_cuda(const RunConfig& c, const ConfigContext& ctx) {
  return c.device == DeviceChoice::Cuda || (c.device == DeviceChoice::Auto && ctx.cuda_available);
}

void check_attention(const RunConfig& c, const ConfigContext& ctx) {
  const bool cuda = runs_on_cuda(c, ctx);
  const std::string_view auto_note = c.device == DeviceChoice::Auto ? "; device auto picks CUDA here" : "";
  if (cuda && c.model.arch && std::find(kCudaHeadDims.begin(), kCudaHeadDims.end(), c.model.arch->head_dim) == kCudaHeadDims.end())
    config_fail("model.head_dim", "must be {} on CUDA (the attention kernels){}, got {} (device cpu accepts any even head_dim)",
                fmt::join(kCudaHeadDims, " or "), auto_note, c.model.arch->head_dim);
  if (c.attention.backend == attn::Backend::Cudnn) {
#ifndef LRSA_WITH_CUDNN
    config_fail("attention.backend",
                "cudnn needs a build with cuDNN, and this one has none (cmake printed 'lrsa: cuDNN OFF' with the "
                "reason); use auto or native");
#endif
    if (!cuda) config_fail("attention.backend", "cudnn runs on CUDA only, and this run uses the CPU; use auto or native");
    if (c.precision.deterministic)
      config_fail("attention.backend",
                  "cudnn is not deterministic (atomic dQ), and precision.deterministic is true; use auto or native");
  }
  if (c.attention.backend == attn::Backend::Wgmma) {
    if (!cuda) config_fail("attention.backend", "wgmma runs on CUDA only, and this run uses the CPU; use auto or native");
    if (c.precision.deterministic)
      config_fail("attention.backend",
                  "wgmma is not deterministic (dQ by reductions in global memory), and precision.deterministic is "
                  "true; use auto or native");
  }
  if (c.attention.mode != attn::Mode::Lrsa) return;
  const attn::LrsaParams& p = c.attention.lrsa;
  try {
    p.validate();  // K = floor(ratio * lag) >= 1, as the kernels compute it
  } catch (const Error& e) {
    throw ConfigError("attention", e.what());
  }
  if (cuda && p.lag % kCudaLagTile != 0)
    config_fail("attention.lag",
                "must be a multiple of {} on CUDA (the LRSA kernel tile){}, got {}: use {} (device cpu accepts any lag >= 1)",
                kCudaLagTile, auto_note, p.lag, nearest_multiples(p.lag, kCudaLagTile));
  if (cuda && p.lag > attn::kCudaMaxLag)
    config_fail("attention.lag", "must be at most {} on CUDA (the selection sorts a partition in one thread block){}, "
                "got {} (device cpu accepts any lag >= 1)", attn::kCudaMaxLag, auto_note, p.lag);
}

void finalize_batch(RunConfig& c, const ConfigContext& ctx) {
  BatchConfig& b = c.batch;
  if (b.micro_batch_tokens == 0) b.micro_batch_tokens = c.data.max_seq_len;
  if (b.tokens_per_step == 0) b.tokens_per_step = b.micro_batch_tokens * ctx.world_size;
  if (b.micro_batch_tokens < c.data.max_seq_len)
    config_fail("batch.micro_batch_tokens", "must be >= data.max_seq_len = {} (a forward holds whole sequences), got {}",
                c.data.max_seq_len, b.micro_batch_tokens);
  const int64_t unit = b.micro_batch_tokens * ctx.world_size;
  if (b.tokens_per_step % unit != 0)
    config_fail("batch.tokens_per_step",
                "must be a multiple of batch.micro_batch_tokens * world size = {} * {} = {}, got {}: use {}",
                b.micro_batch_tokens, ctx.world_size, unit, b.tokens_per_step, nearest_multiples(b.tokens_per_step, unit));
}

void check_run_rules(const RunConfig& c, const ConfigContext& ctx) {
  const ScheduleConfig& s = c.schedule;
  if (s.max_steps == 0 && s.epochs == 0)
    config_fail("schedule.max_steps", "a run needs a bound: set schedule.max_steps or schedule.epochs (both are 0)");
  if (s.max_steps > 0 && s.warmup_steps > s.max_steps)
    config_fail("schedule.warmup_steps", "must be <= schedule.max_steps = {}, got {}", s.max_steps, s.warmup_steps);
  if (c.data.format == DataFormat::Qa) check_prompt_template(c.data.prompt_template);
  if (c.eval.every_steps > 0 && c.data.eval.empty())
    config_fail("eval.every_steps", "is {}, but data.eval names no files", c.eval.every_steps);
  const Backend backend = c.distributed.backend;
  if (backend == Backend::None && ctx.world_size > 1)
    config_fail("distributed.backend", "none runs a single process, but the world size is {}", ctx.world_size);
  if (backend == Backend::Nccl && !runs_on_cuda(c, ctx))
    config_fail("distributed.backend", "nccl needs CUDA, but the device is {}{}", choice_name(c.device),
                c.device == DeviceChoice::Auto ? " (no GPU here)" : "");
  if (backend == Backend::MpiCpu && runs_on_cuda(c, ctx))
    config_fail("distributed.backend", "mpi_cpu reduces host memory, but the device is cuda: use nccl (or auto)");
}

std::string strip_json_exception_prefix(const char* what) {
  const std::string text = what;
  const size_t end = text.find("] ");
  return text.starts_with("[json.exception") && end != std::string::npos ? text.substr(end + 2) : text;
}

// Did the override at `set_path` put the key at `error_path` there (or its section)?
bool override_touches(const std::string& set_path, const std::string& error_path) {
  const auto within = [](const std::string& inner, const std::string& outer) {
    return inner.starts_with(outer) && (inner.size() == outer.size() || inner[outer.size()] == '.' || inner[outer.size()] == '[');
  };
  return !error_path.empty() && (within(error_path, set_path) || within(set_path, error_path));
}

}  // namespace

void apply_override(json& root, std::string_view assignment) {
  const size_t equals = assignment.find('=');
  const std::string key(assignment.substr(0, std::min(equals, assignment.size())));
  if (equals == std::string_view::npos || key.empty())
    throw ConfigError("", fmt::format("--set {}: expected section.key=value", assignment));
  const std::vector<std::string_view> parts = [&] {
    std::vector<std::string_view> out;
    std::string_view rest = key;
    for (size_t dot = rest.find('.'); ; dot = rest.find('.')) {
      out.push_back(rest.substr(0, dot));
      if (dot == std::string_view::npos) break;
      rest.remove_prefix(dot + 1);
    }
    return out;
  }();
  if (std::any_of(parts.begin(), parts.end(), [](std::string_view p) { return p.empty(); }))
    throw ConfigError(key, fmt::format("--set {}: empty name in key '{}'", assignment, key));

  const std::string_view text = assignment.substr(equals + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    value = std::string(text);
    try {
      (void)value.dump();
    } catch (const json::type_error&) {
      throw ConfigError(key, fmt::format("--set {}: the value is not valid UTF-8", key));
    }
  }

  json* node = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    json& child = (*node)[std::string(parts[i])];
    if (child.is_null()) child = json::object();
    if (!child.is_object()) {
      const std::string section = key.substr(0, size_t(parts[i].data() + parts[i].size() - key.data()));
      throw ConfigError(key, fmt::format("--set {}: '{}' is not a section (it holds {})", assignment, section, describe(child)));
    }
    node = &child;
  }
  if (value.is_null()) node->erase(std::string(parts.back()));
  else (*node)[std::string(parts.back())] = std::move(value);
}

void finalize_config(RunConfig& config, const ConfigContext& ctx) {
  LRSA_CHECK(ctx.world_size >= 1 && ctx.world_size <= kMaxWorldSize, "config: world size must be in [1, {}], got {}",
             kMaxWorldSize, ctx.world_size);
  FieldChecker checker;
  schema(checker, std::as_const(config));
  finalize_model(config);
  finalize_tokenizer(config);
  check_attention(config, ctx);
  finalize_batch(config, ctx);
  if (config.checkpoint.dir.empty()) config.checkpoint.dir = (std::filesystem::path(config.output_dir) / "checkpoints").string();
  if (config.logging.metrics_file.empty())
    config.logging.metrics_file = (std::filesystem::path(config.output_dir) / "metrics.jsonl").string();
  check_run_rules(config, ctx);
}

RunConfig load_config_text(std::string_view text, const std::string& origin, const std::vector<std::string>& overrides,
                           const ConfigContext& ctx) {
  json root;
  try {
    root = json::parse(text, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number overflow
    throw ConfigError("", fmt::format("config {}: invalid JSON: {}", origin, strip_json_exception_prefix(e.what())));
  }
  if (!root.is_object())
    throw ConfigError("", fmt::format("config {}: expected a JSON object at the top level, got {}", origin, describe(root)));

  std::vector<std::pair<std::string, std::string>> set_paths;  // key, assignment
  for (const std::string& assignment : overrides) {
    try {
      apply_override(root, assignment);
    } catch (const ConfigError& e) {
      throw ConfigError(e.path(), fmt::format("config {}: {}", origin, e.what()));
    }
    set_paths.emplace_back(assignment.substr(0, assignment.find('=')), assignment);
  }

  try {
    RunConfig config;
    Reader reader(root);
    schema(reader, config);
    reader.finish();
    finalize_config(config, ctx);
    return config;
  } catch (const ConfigError& e) {
    // Name the override that put the offending key there; the last one wins, as when applied.
    for (auto it = set_paths.rbegin(); it != set_paths.rend(); ++it)
      if (override_touches(it->first, e.path()))
        throw ConfigError(e.path(), fmt::format("config {} (--set {}): {}", origin, it->second, e.what()));
    throw ConfigError(e.path(), fmt::format("config {}: {}", origin, e.what()));
  }
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides, const ConfigContext& ctx) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("", fmt::format("config {}: cannot open: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return load_config_text(text.str(), path, overrides, ctx);
}

void check_inputs_exist(const RunConfig& config) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string cwd = fs::current_path(ec).string();
  const auto require = [&](const std::string& json_path, const std::string& file, bool directory) {
    const bool ok = directory ? fs::is_directory(file, ec) : fs::exists(file, ec);
    if (!ok)
      config_fail(json_path, "{} '{}' not found{}", directory ? "directory" : "file", file,
                  fs::path(file).is_relative() ? fmt::format(" (relative paths resolve against the current directory '{}')", cwd) : "");
  };
  if (!config.model.path.empty()) require("model.path", config.model.path, true);
  if (!config.tokenizer.path.starts_with("builtin:")) require("tokenizer.path", config.tokenizer.path, false);
  for (size_t i = 0; i < config.data.train.size(); ++i) require(fmt::format("data.train[{}]", i), config.data.train[i], false);
  for (size_t i = 0; i < config.data.eval.size(); ++i) require(fmt::format("data.eval[{}]", i), config.data.eval[i], false);
}

ordered_json config_to_json(const RunConfig& config) {
  ordered_json root = ordered_json::object();
  Writer writer(root);
  schema(writer, config);
  return root;
}

std::string dump_config(const RunConfig& config) { return config_to_json(config).dump(2) + "\n"; }

}  // namespace lrsa::train
