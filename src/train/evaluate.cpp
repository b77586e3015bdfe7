#include <spdlog/spdlog.h>

#include <cmath>
#include <fstream>

#include "lrsa/model/safetensors.h"
#include "lrsa/train/data_source.h"
#include "lrsa/train/trainer.h"

namespace lrsa::train {

namespace fs = std::filesystem;

EvalResult run_eval(const RunConfig& config, const fs::path& weights, const fs::path& per_token_out) {
  LRSA_CHECK(!config.data.eval.empty(), "eval: data.eval names no files");
  const ModelSetup setup = resolve_model(config);
  model::Decoder decoder(setup.config, setup.options, setup.param_dtype, setup.device);
  if (weights.empty()) {
    init_or_load_weights(decoder, config);
  } else {
    model::load_hf_weights(decoder.params(), setup.config, model::load_safetensors_checkpoint(weights), weights.string());
  }
  const data::Tokenizer tokenizer = load_tokenizer(config);
  const std::shared_ptr<const data::Dataset> dataset = load_dataset(config, tokenizer, config.data.eval);
  const int64_t samples = config.eval.max_samples > 0 ? std::min(config.eval.max_samples, dataset->size()) : dataset->size();

  std::ofstream per_token;
  if (!per_token_out.empty()) {
    per_token.open(per_token_out);
    LRSA_CHECK(per_token.good(), "eval: cannot write {}", per_token_out.string());
  }
  EvalResult result;
  // Documents packed in order into micro-batches of at most batch.micro_batch_tokens tokens.
  for (int64_t first = 0; first < samples;) {
    std::vector<int32_t> ids, labels;
    std::vector<int64_t> cu_seqlens{0};
    int64_t last = first;
    while (last < samples && (last == first || int64_t(ids.size()) + dataset->length(last) <= config.batch.micro_batch_tokens)) {
      ids.insert(ids.end(), dataset->input_ids(last).begin(), dataset->input_ids(last).end());
      labels.insert(labels.end(), dataset->labels(last).begin(), dataset->labels(last).end());
      cu_seqlens.push_back(int64_t(ids.size()));
      ++last;
    }
    const model::TokenBatch batch = model::TokenBatch::from_host(ids, labels, cu_seqlens, setup.device);
    Tensor nll = Tensor::empty({int64_t(ids.size())}, DType::F32, setup.device);
    const model::LossSums sums = decoder.forward_loss(batch, &nll);
    result.tokens += sums.tokens;
    result.mean_loss += sums.loss_sum;
    if (per_token.is_open()) {
      const std::vector<float> values = nll.to_floats();
      const std::vector<int64_t> targets = batch.targets.to_ints();
      for (int64_t d = first; d < last; ++d) {
        std::vector<float> doc_nll;
        for (int64_t t = cu_seqlens[size_t(d - first)]; t < cu_seqlens[size_t(d - first + 1)]; ++t)
          if (targets[size_t(t)] != -100) doc_nll.push_back(values[size_t(t)]);
        per_token << nlohmann::json{{"index", d}, {"nll", doc_nll}}.dump() << "\n";
      }
    }
    first = last;
  }
  result.samples = samples;
  result.mean_loss = result.tokens > 0 ? result.mean_loss / double(result.tokens) : 0.0;
  result.perplexity = std::exp(result.mean_loss);
  fs::create_directories(config.output_dir);
  std::ofstream(fs::path(config.output_dir) / "eval.json")
      << nlohmann::json{{"loss", result.mean_loss}, {"perplexity", result.perplexity}, {"tokens", result.tokens},
                        {"samples", result.samples}}
             .dump(2)
      << "\n";
  return result;
}

}  // namespace lrsa::train
