#pragma once
// The run configuration of lrsa-train: one JSON file (docs/config.md is the field-by-field
// reference), optionally changed by `--set section.key=value` overrides, checked completely
// before any heavy work. Every error names the config, the JSON path and the offending value.
//
// The structs hold plain values; converting them to the model/data types is the trainer's job.
// Fields documented as "0 = derive" (or "" = derive) are filled by finalize_config, so a loaded
// config never holds those sentinels and dumps back to an equivalent, fully explicit JSON.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "lrsa/attn/attention.h"
#include "lrsa/core/dtype.h"
#include "lrsa/core/error.h"
#include "lrsa/dist/launch.h"

namespace lrsa::train {

// Limits of the CUDA attention kernels (kernels/attn_common.cu), checked up front so a run does
// not fail after loading the model: LRSA partitions must be whole 64-key tiles, and the head
// dimension is one the kernels are instantiated for.
constexpr int64_t kCudaLagTile = 64;
constexpr std::array<int64_t, 2> kCudaHeadDims = {64, 128};

enum class Architecture { Qwen2, Llama };
enum class WeightDType { Auto, BF16, F16, F32 };
enum class ChatTemplate { Auto, Qwen, Llama3 };
enum class DataFormat { Chat, Qa, Tokenized };
enum class TruncateSide { Left, Right };
enum class Decay { Cosine, Linear, Constant };
enum class Checkpointing { None, All, EveryN };
enum class Progress { Auto, Bar, Plain };
enum class Backend { Auto, Nccl, MpiCpu, None };
enum class DeviceChoice { Auto, Cpu, Cuda };

// A model described inline (randomly initialized) instead of loaded from an HF directory.
struct InlineArchitecture {
  Architecture architecture = Architecture::Qwen2;
  int64_t vocab_size = 0;           // required
  int64_t hidden_size = 0;          // required
  int64_t intermediate_size = 0;    // required
  int64_t num_hidden_layers = 0;    // required
  int64_t num_attention_heads = 0;  // required
  int64_t num_key_value_heads = 0;  // 0 = derive: num_attention_heads
  int64_t head_dim = 0;             // 0 = derive: hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  // q/k/v biases (Llama: also o_proj). Unset = derive: qwen2 true (Qwen2 always has them), llama false.
  std::optional<bool> attention_bias;
  int64_t max_position_embeddings = 32768;
};

struct ModelConfig {
  std::string path;                         // HF model directory, or "" with `arch` set
  std::optional<InlineArchitecture> arch;   // exactly one of path / arch
  WeightDType dtype = WeightDType::Auto;
};

struct TokenizerConfig {
  std::string path;  // tokenizer.json, HF directory or "builtin:bytes"; "" = derive: model.path
  ChatTemplate chat_template = ChatTemplate::Auto;
};

struct DataConfig {
  std::vector<std::string> train;  // at least one file
  std::vector<std::string> eval;   // may be empty
  DataFormat format = DataFormat::Chat;
  std::string prompt_template = "{context}\n\nQuestion: {question}\nAnswer:";
  int64_t max_seq_len = 2048;
  TruncateSide truncate_side = TruncateSide::Left;
  bool skip_bad_lines = false;
  bool shuffle = true;
};

struct AttentionSection {
  attn::Mode mode = attn::Mode::Lrsa;
  attn::LrsaParams lrsa;  // sink, lag, ratio, score_v_ratio (defaults from attention.h)
  attn::Backend backend = attn::Backend::Auto;  // CUDA implementation: auto, native kernels or cuDNN
  double cudnn_gather_gib = attn::kDefaultCudnnGatherGib;  // memory of one LRSA-on-cuDNN call (passes)
};

struct OptimConfig {  // AdamW
  double lr = 1e-5;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double grad_clip = 1.0;  // global gradient norm; 0 = off
};

struct ScheduleConfig {
  int64_t warmup_steps = 0;
  Decay decay = Decay::Cosine;
  double min_lr_ratio = 0.1;
  int64_t max_steps = 0;  // 0 = unbounded (epochs must then be set)
  int64_t epochs = 0;     // 0 = unbounded (max_steps must then be set)
};

struct BatchConfig {
  int64_t tokens_per_step = 0;     // global; 0 = derive: micro_batch_tokens * world size
  int64_t micro_batch_tokens = 0;  // per forward per rank; 0 = derive: data.max_seq_len
  // Micro-batches each rank accumulates per optimizer step.
  int64_t accumulation_steps(int world_size) const { return tokens_per_step / (micro_batch_tokens * world_size); }
};

struct PrecisionConfig {
  DType param_dtype = DType::F32;  // F32 or BF16
  bool deterministic = false;
};

struct MemoryConfig {
  Checkpointing activation_checkpointing = Checkpointing::None;
  int64_t every = 2;  // with EveryN: checkpoint layers 0, every, 2*every, ...
};

struct CheckpointConfig {
  int64_t every_steps = 0;  // 0 = only the final checkpoint
  int64_t keep_last = 2;    // 0 = keep all
  std::string dir;          // "" = derive: <output_dir>/checkpoints
};

struct LoggingConfig {
  int64_t every_steps = 10;
  Progress progress = Progress::Auto;
  std::string metrics_file;  // "" = derive: <output_dir>/metrics.jsonl
};

struct DistributedConfig {
  Backend backend = Backend::Auto;
  bool zero1 = false;
  int64_t bucket_mb = 25;
  double timeout_s = 600;  // longest wait on other ranks before the job is aborted
};

struct EvalConfig {
  int64_t every_steps = 0;  // 0 = only at the end (when data.eval names files)
  int64_t max_samples = 0;  // 0 = all
};

struct RunConfig {
  std::string output_dir;  // required
  ModelConfig model;
  TokenizerConfig tokenizer;
  DataConfig data;
  AttentionSection attention;
  OptimConfig optim;
  ScheduleConfig schedule;
  BatchConfig batch;
  PrecisionConfig precision;
  MemoryConfig memory;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  DistributedConfig distributed;
  int64_t seed = 1234;
  DeviceChoice device = DeviceChoice::Auto;
  EvalConfig eval;
};

// What validation needs to know about the launch.
struct ConfigContext {
  int world_size = dist::detect_launch().world;  // ranks of the run (batch arithmetic): mpirun's -np

  bool cuda_available = false;  // decides what device "auto" becomes (kernel constraints)
};

// A configuration error. what() is the full message; path() the JSON path it is about
// ("attention.ratio", "optim.learing_rate", "" for the whole file).
class ConfigError : public Error {
 public:
  ConfigError(std::string path, const std::string& message) : Error(message), path_(std::move(path)) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Reads `path`, applies the overrides in order, parses, fills derived defaults and validates.
// Errors: "config <path>: <json path>: <message>", with "(--set ...)" after the file name when
// the offending key came from an override.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides, const ConfigContext& ctx);

// Same from text; `origin` names it in messages (a file name, "checkpoint", ...).
RunConfig load_config_text(std::string_view text, const std::string& origin, const std::vector<std::string>& overrides,
                           const ConfigContext& ctx);

// Applies one "section.key=value" assignment: value is JSON when it parses as JSON, else a string;
// null removes the key (back to its default). Missing sections are created.
void apply_override(nlohmann::json& root, std::string_view assignment);

// Fills the derived defaults and validates ranges and cross-field rules; idempotent.
// Used by the loaders; call it on configs built in code.
void finalize_config(RunConfig& config, const ConfigContext& ctx);

// Checks that the inputs named by the config exist (model.path, tokenizer.path, data files);
// separate from validation so configs can be checked before their data is generated.
void check_inputs_exist(const RunConfig& config);

// Every field, in schema order; loading it back gives the same config.
nlohmann::ordered_json config_to_json(const RunConfig& config);
std::string dump_config(const RunConfig& config);

}  // namespace lrsa::train
