#pragma once
// The training and evaluation drivers behind `lrsa-train train` and `lrsa-train eval`.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lrsa/model/decoder.h"
#include "lrsa/train/config.h"

namespace lrsa::train {

// One packed micro-batch on the host, Hugging Face label convention (labels aligned with
// input_ids; -100 = not trained); documents delimited by cu_seqlens.
struct HostBatch {
  std::vector<int32_t> input_ids, labels, positions;
  std::vector<int64_t> cu_seqlens;
};

// Where micro-batches come from: the data layer's packed loader in runs, synthetic batches in
// tests. The cursor makes resume exact.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual HostBatch next() = 0;
  virtual nlohmann::json cursor() const = 0;
  virtual void restore(const nlohmann::json& cursor) = 0;
  // Epochs completed (the schedule stops at schedule.epochs when set).
  virtual int64_t epoch() const = 0;
};

struct TrainOptions {
  std::string resume;  // "" (fresh), "auto" (newest valid checkpoint if any) or a checkpoint dir
  // For tests: stop (as if interrupted, saving a checkpoint) after this optimizer step; 0 = never.
  int64_t stop_after_step = 0;
};

struct StepRecord {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  int64_t tokens = 0;
  bool skipped = false;
};

struct TrainResult {
  std::vector<StepRecord> steps;  // the steps this process ran
  int64_t last_step = 0;
  std::filesystem::path last_checkpoint;
  bool interrupted = false;
};

// The model the config describes: its architecture and device, weights from model.path or
// random (inline architecture, from config.seed).
struct ModelSetup {
  model::ModelConfig config;
  Device device;
  DType param_dtype;
  model::DecoderOptions options;
  // Training's GEMM algorithm search (ops::set_gemm_candidates): the fastest of 8 timed
  // candidates, or cuBLASLt's first under precision.deterministic (bitwise reproducible runs).
  int gemm_candidates = 1;
};
ModelSetup resolve_model(const RunConfig& config);
void init_or_load_weights(model::Decoder& decoder, const RunConfig& config);

// Runs training with `source` supplying micro-batches (data.train through the data layer when
// null).
TrainResult run_training(const RunConfig& config, const TrainOptions& options, std::unique_ptr<BatchSource> source = nullptr);

struct EvalResult {
  double mean_loss = 0;
  int64_t tokens = 0;
  double perplexity = 0;
  int64_t samples = 0;
};

// Evaluates the model of `config` (or the weights of checkpoint dir `weights`, when set) on
// data.eval; writes <output_dir>/eval.json and, with per_token_out, one JSON line per sample
// {"index": i, "nll": [...]}.
EvalResult run_eval(const RunConfig& config, const std::filesystem::path& weights,
                    const std::filesystem::path& per_token_out);

}  // namespace lrsa::train
