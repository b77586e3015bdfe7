#include "lrsa/train/data_source.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "lrsa/data/loader.h"

namespace lrsa::train {

data::Tokenizer load_tokenizer(const RunConfig& config) {
  const std::string& spec = config.tokenizer.path;
  if (spec == "builtin:bytes") return data::Tokenizer::load("bytes");
  std::filesystem::path path = spec;
  if (std::filesystem::is_directory(path)) path /= "tokenizer.json";
  return data::Tokenizer::load(path.string());
}

data::DatasetOptions dataset_options(const RunConfig& config) {
  data::DatasetOptions o;
  switch (config.data.format) {
    case DataFormat::Chat: o.format = data::DataFormat::Chat; break;
    case DataFormat::Qa: o.format = data::DataFormat::Qa; break;
    case DataFormat::Tokenized: o.format = data::DataFormat::Tokens; break;
  }
  o.max_tokens = config.data.max_seq_len;
  o.truncate_side = config.data.truncate_side == TruncateSide::Left ? data::TruncateSide::Left : data::TruncateSide::Right;
  o.prompt_template = config.data.prompt_template;
  o.skip_bad_lines = config.data.skip_bad_lines;
  if (config.tokenizer.chat_template == ChatTemplate::Qwen) o.chat_format = data::ChatFormat::ChatML;
  if (config.tokenizer.chat_template == ChatTemplate::Llama3) o.chat_format = data::ChatFormat::Llama3;
  // The byte tokenizer is for from-scratch demos: QA renders as plain prompt + answer there.
  if (config.tokenizer.path == "builtin:bytes") o.qa_style = data::QaStyle::Plain;
  return o;
}

std::shared_ptr<const data::Dataset> load_dataset(const RunConfig& config, const data::Tokenizer& tokenizer,
                                                  const std::vector<std::string>& files) {
  auto dataset = std::make_shared<data::Dataset>(data::load_jsonl(files, tokenizer, dataset_options(config)));
  spdlog::info("data {}: {}", fmt::join(files, ", "), dataset->stats().summary());
  return dataset;
}

namespace {

class LoaderSource final : public BatchSource {
 public:
  LoaderSource(std::shared_ptr<const data::Dataset> dataset, const data::LoaderOptions& options, int64_t sequences_per_micro)
      : loader_(std::move(dataset), options), sequences_per_micro_(sequences_per_micro) {}

  // Concatenates whole packed sequences up to the micro-batch budget (documents stay separate
  // through cu_seqlens).
  HostBatch next() override {
    HostBatch out;
    out.cu_seqlens.push_back(0);
    for (int64_t i = 0; i < sequences_per_micro_; ++i) {
      const data::Batch b = loader_.next();
      const int64_t base = int64_t(out.input_ids.size());
      out.input_ids.insert(out.input_ids.end(), b.input_ids.begin(), b.input_ids.end());
      out.labels.insert(out.labels.end(), b.labels.begin(), b.labels.end());
      out.positions.insert(out.positions.end(), b.positions.begin(), b.positions.end());
      for (size_t d = 1; d < b.cu_seqlens.size(); ++d) out.cu_seqlens.push_back(base + b.cu_seqlens[d]);
    }
    return out;
  }
  nlohmann::json cursor() const override { return loader_.cursor().to_json(); }
  void restore(const nlohmann::json& cursor) override { loader_.restore(data::Cursor::from_json(cursor)); }
  int64_t epoch() const override { return loader_.cursor().epoch; }

 private:
  data::DataLoader loader_;
  int64_t sequences_per_micro_;
};

}  // namespace

std::unique_ptr<BatchSource> make_train_source(const RunConfig& config, int rank, int world) {
  const data::Tokenizer tokenizer = load_tokenizer(config);
  auto dataset = load_dataset(config, tokenizer, config.data.train);
  data::LoaderOptions options;
  options.max_seq_len = config.data.max_seq_len;
  options.seed = uint64_t(config.seed);
  options.shuffle = config.data.shuffle;
  options.rank = rank;
  options.world = world;
  return std::make_unique<LoaderSource>(std::move(dataset), options,
                                        std::max<int64_t>(config.batch.micro_batch_tokens / config.data.max_seq_len, 1));
}

}  // namespace lrsa::train
