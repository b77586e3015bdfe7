#pragma once
// `lrsa-train eval-qa`: greedy generation on a QA set through the KV cache at several cache
// settings (dense and LagKV ratios), scored with qa_metrics.h; `lrsa-train generate`: greedy
// answers to user prompts (docs/inference.md).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "lrsa/infer/engine.h"
#include "lrsa/infer/qa_metrics.h"
#include "lrsa/train/config.h"

namespace lrsa::infer {

// One line of a QA JSONL file: {"context", "question", "answer"} (the data layer's qa format);
// "answer" may also be an array of accepted answers.
struct QaSample {
  std::string context, question;
  std::vector<std::string> answers;
};
// Errors name "path:line".
std::vector<QaSample> load_qa_samples(const std::string& path);

// "dense" or a kept ratio in (0, 1] (LagKV with the run's sink and lag).
CacheSpec parse_cache_setting(const std::string& text, const attn::LrsaParams& base);

struct EvalQaOptions {
  std::filesystem::path weights;  // checkpoint or HF dir; empty: newest valid checkpoint, else the config's model
  std::string data;               // QA JSONL; empty: the config's data.eval
  std::vector<std::string> settings{"dense", "0.5", "0.25", "0.125"};
  int64_t max_new_tokens = 32;
  int64_t max_samples = 0;  // 0: config.eval.max_samples (0 there: all)
  int64_t batch = 8;        // prompts generated together
  PrefillPath prefill = PrefillPath::Whole;
  std::filesystem::path out;  // per-sample JSONL (empty: none)
};

struct SettingResult {
  std::string name;
  QaScores scores;  // means
  CacheUsage cache;  // after prefill, summed over samples
  double prefill_s = 0, decode_s = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

std::vector<SettingResult> run_eval_qa(const train::RunConfig& config, const EvalQaOptions& options);
std::string format_eval_qa_table(const std::vector<SettingResult>& results);

struct GenerateCommandOptions {
  std::filesystem::path weights;  // as EvalQaOptions::weights
  std::vector<std::string> prompts;  // each a user message (chat template), or raw text for the byte tokenizer
  std::string setting = "dense";     // "dense" or a LagKV kept ratio
  int64_t max_new_tokens = 128;
};
struct GeneratedText {
  std::string text;
  bool stopped = false;
  CacheUsage cache;  // after the prompt
};
std::vector<GeneratedText> run_generate(const train::RunConfig& config, const GenerateCommandOptions& options);

}  // namespace lrsa::infer
