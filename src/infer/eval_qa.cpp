#include "lrsa/infer/eval_qa.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lrsa/data/chat.h"
#include "lrsa/data/dataset.h"
#include "lrsa/model/safetensors.h"
#include "lrsa/train/checkpoint.h"
#include "lrsa/train/data_source.h"
#include "lrsa/train/trainer.h"

namespace lrsa::infer {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<QaSample> load_qa_samples(const std::string& path) {
  std::ifstream in(path);
  LRSA_CHECK(in.good(), "eval-qa: cannot read {}", path);
  std::vector<QaSample> samples;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const json obj = json::parse(line);
      LRSA_CHECK(obj.is_object(), "a line must be a JSON object");
      QaSample s;
      for (const char* key : {"context", "question"}) {
        LRSA_CHECK(obj.contains(key) && obj[key].is_string(), "\"{}\" must be a string", key);
        (key[0] == 'c' ? s.context : s.question) = obj[key].get<std::string>();
      }
      LRSA_CHECK(obj.contains("answer"), "\"answer\" is missing");
      const json& a = obj["answer"];
      if (a.is_string()) s.answers.push_back(a.get<std::string>());
      else if (a.is_array())
        for (const json& x : a) {
          LRSA_CHECK(x.is_string(), "\"answer\" must be a string or an array of strings");
          s.answers.push_back(x.get<std::string>());
        }
      LRSA_CHECK(!s.answers.empty(), "\"answer\" must be a string or a non-empty array of strings");
      samples.push_back(std::move(s));
    } catch (const std::exception& e) {
      fail("{}:{}: {}", path, number, e.what());
    }
  }
  LRSA_CHECK(!samples.empty(), "eval-qa: no samples in {}", path);
  return samples;
}

CacheSpec parse_cache_setting(const std::string& text, const attn::LrsaParams& base) {
  if (text == "dense") return CacheSpec::dense();
  double ratio = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ratio);
  LRSA_CHECK(ec == std::errc() && end == text.data() + text.size() && ratio > 0 && ratio <= 1,
             "eval-qa: cache setting '{}' is neither 'dense' nor a ratio in (0, 1]", text);
  attn::LrsaParams p = base;
  p.ratio = ratio;
  return CacheSpec::lagkv(p);
}

namespace {

void load_weights(model::Decoder& decoder, const train::RunConfig& config, const fs::path& weights) {
  fs::path dir = weights;
  if (dir.empty()) {
    if (auto latest = train::latest_valid_checkpoint(config.checkpoint.dir, [](const std::string& w) { spdlog::warn("{}", w); }))
      dir = *latest;
  }
  if (dir.empty()) {
    spdlog::info("no checkpoint under {}: the config's model", config.checkpoint.dir);
    train::init_or_load_weights(decoder, config);
    return;
  }
  spdlog::info("weights from {}", dir.string());
  model::load_hf_weights(decoder.params(), decoder.config(), model::load_safetensors_checkpoint(dir), dir.string());
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// The tokenizer's end tokens: generation stops on any of them.
std::vector<int32_t> stop_tokens(const data::Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  for (const char* stop : {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>"})
    if (auto id = tokenizer.find_token(stop)) ids.push_back(*id);
  return ids;
}

}  // namespace

std::vector<SettingResult> run_eval_qa(const train::RunConfig& config, const EvalQaOptions& options) {
  LRSA_CHECK(options.max_new_tokens >= 1 && options.batch >= 1, "eval-qa: max_new_tokens {} and batch {} must be >= 1",
             options.max_new_tokens, options.batch);
  std::vector<std::string> files = options.data.empty() ? config.data.eval : std::vector<std::string>{options.data};
  LRSA_CHECK(!files.empty(), "eval-qa: no QA file: data.eval is empty and --data not given");
  std::vector<QaSample> samples;
  for (const std::string& f : files) {
    std::vector<QaSample> part = load_qa_samples(f);
    samples.insert(samples.end(), part.begin(), part.end());
  }
  const int64_t limit = options.max_samples > 0 ? options.max_samples : config.eval.max_samples;
  if (limit > 0 && int64_t(samples.size()) > limit) samples.resize(size_t(limit));

  const train::ModelSetup setup = train::resolve_model(config);
  model::Decoder decoder(setup.config, setup.options, setup.param_dtype, setup.device);
  load_weights(decoder, config, options.weights);

  const data::Tokenizer tokenizer = train::load_tokenizer(config);
  const data::DatasetOptions dataset = train::dataset_options(config);
  std::vector<std::vector<int32_t>> prompts;
  for (const QaSample& s : samples)
    prompts.push_back(data::render_qa_prompt(tokenizer, dataset, s.context, s.question, options.max_new_tokens));
  GenerateOptions gen;
  gen.max_new_tokens = options.max_new_tokens;
  gen.prefill = options.prefill;
  gen.stop_tokens = stop_tokens(tokenizer);

  std::ofstream out;
  if (!options.out.empty()) {
    if (options.out.has_parent_path()) fs::create_directories(options.out.parent_path());
    out.open(options.out);
    LRSA_CHECK(out.good(), "eval-qa: cannot write {}", options.out.string());
  }
  std::vector<SettingResult> results;
  for (const std::string& setting : options.settings) {
    const CacheSpec spec = parse_cache_setting(setting, config.attention.lrsa);
    Engine engine(decoder, spec);
    SettingResult r;
    r.name = spec.name();
    QaScores sums;
    for (size_t first = 0; first < prompts.size(); first += size_t(options.batch)) {
      const size_t last = std::min(prompts.size(), first + size_t(options.batch));
      const std::vector<std::vector<int32_t>> batch(prompts.begin() + ptrdiff_t(first), prompts.begin() + ptrdiff_t(last));
      const GenerateResult g = generate(engine, batch, gen);
      r.prefill_s += g.prefill_s;
      r.decode_s += g.decode_s;
      r.prompt_tokens += g.prompt_tokens;
      r.cache.rows += g.prefill_cache.rows;
      r.cache.dense_rows += g.prefill_cache.dense_rows;
      r.cache.bytes += g.prefill_cache.bytes;
      r.cache.dense_bytes += g.prefill_cache.dense_bytes;
      for (size_t i = first; i < last; ++i) {
        const Generation& out_i = g.outputs[i - first];
        r.generated_tokens += int64_t(out_i.tokens.size());
        const std::string prediction = trim(tokenizer.decode(out_i.tokens, /*skip_special=*/true));
        const QaSample& s = samples[i];
        sums.add(prediction, s.answers);
        if (out.is_open()) {
          const int64_t n = int64_t(prompts[i].size());
          out << json{{"setting", r.name},
                      {"index", i},
                      {"prediction", prediction},
                      {"answers", s.answers},
                      {"exact_match", exact_match(prediction, s.answers)},
                      {"f1", token_f1(prediction, s.answers)},
                      {"recall", substring_recall(prediction, s.answers)},
                      {"stopped", out_i.stopped},
                      {"prompt_tokens", n},
                      {"cache_rows", cache_rows(spec, n)}}
                     .dump()
              << "\n";
        }
      }
    }
    r.scores = sums.mean();
    spdlog::info("eval-qa {}: EM {:.3f} F1 {:.3f} recall {:.3f}, cache rows kept {:.1f}%", r.name, r.scores.exact_match,
                 r.scores.f1, r.scores.recall, 100 * r.cache.kept_fraction());
    results.push_back(r);
  }
  return results;
}

std::vector<GeneratedText> run_generate(const train::RunConfig& config, const GenerateCommandOptions& options) {
  LRSA_CHECK(!options.prompts.empty(), "generate: no prompt given");
  const train::ModelSetup setup = train::resolve_model(config);
  model::Decoder decoder(setup.config, setup.options, setup.param_dtype, setup.device);
  load_weights(decoder, config, options.weights);
  const data::Tokenizer tokenizer = train::load_tokenizer(config);
  const data::DatasetOptions dataset = train::dataset_options(config);
  std::optional<data::ChatTemplate> chat;
  if (dataset.qa_style == data::QaStyle::Chat) {
    const std::optional<data::ChatFormat> format = dataset.chat_format ? dataset.chat_format : data::detect_chat_format(tokenizer);
    LRSA_CHECK(format, "generate: tokenizer '{}' has no known chat tokens; set tokenizer.chat_template", tokenizer.source());
    chat.emplace(tokenizer, *format, dataset.default_system_prompt);
  }
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& p : options.prompts) {
    const std::vector<data::ChatMessage> messages{{"user", p}};
    prompts.push_back(chat ? chat->render_prompt(messages) : tokenizer.encode(p, /*parse_special=*/false));
  }
  const CacheSpec spec = parse_cache_setting(options.setting, config.attention.lrsa);
  Engine engine(decoder, spec);
  GenerateOptions gen;
  gen.max_new_tokens = options.max_new_tokens;
  gen.stop_tokens = stop_tokens(tokenizer);
  const GenerateResult result = generate(engine, prompts, gen);
  std::vector<GeneratedText> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GeneratedText t;
    t.text = tokenizer.decode(result.outputs[i].tokens, /*skip_special=*/true);
    t.stopped = result.outputs[i].stopped;
    t.cache.rows = cache_rows(spec, int64_t(prompts[i].size()));
    t.cache.dense_rows = int64_t(prompts[i].size());
    out.push_back(t);
  }
  spdlog::info("generate ({}): prompts {} tokens, prefill {:.3f} s, {} decode steps in {:.3f} s, cache rows kept {:.1f}%",
               spec.name(), result.prompt_tokens, result.prefill_s, result.decode_steps, result.decode_s,
               100 * result.prefill_cache.kept_fraction());
  return out;
}

std::string format_eval_qa_table(const std::vector<SettingResult>& results) {
  std::string s = fmt::format("{:<18} {:>7} {:>7} {:>7} {:>8} {:>11} {:>13} {:>12}\n", "cache", "EM", "F1", "recall",
                              "samples", "rows kept", "cache MiB", "prefill tok/s");
  for (const SettingResult& r : results)
    s += fmt::format("{:<18} {:>7.3f} {:>7.3f} {:>7.3f} {:>8} {:>10.1f}% {:>13.2f} {:>12.0f}\n", r.name, r.scores.exact_match,
                     r.scores.f1, r.scores.recall, r.scores.samples, 100 * r.cache.kept_fraction(),
                     double(r.cache.bytes) / (1 << 20), r.prefill_s > 0 ? double(r.prompt_tokens) / r.prefill_s : 0.0);
  return s;
}

}  // namespace lrsa::infer
