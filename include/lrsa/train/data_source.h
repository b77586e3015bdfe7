#pragma once
// The bridge from the run config to the data layer: tokenizer, datasets and the packed loader
// as the trainer's BatchSource.
#include <memory>
#include <string>
#include <vector>

#include "lrsa/data/dataset.h"
#include "lrsa/data/tokenizer.h"
#include "lrsa/train/trainer.h"

namespace lrsa::train {

// tokenizer.path: "builtin:bytes", a tokenizer.json, or an HF directory holding one.
data::Tokenizer load_tokenizer(const RunConfig& config);

data::DatasetOptions dataset_options(const RunConfig& config);

// Loads and tokenizes `files` with the config's data options, logging the dataset statistics.
std::shared_ptr<const data::Dataset> load_dataset(const RunConfig& config, const data::Tokenizer& tokenizer,
                                                  const std::vector<std::string>& files);

// data.train packed into micro-batches of batch.micro_batch_tokens (whole sequences of at most
// data.max_seq_len tokens each), shuffled from config.seed, sharded over (rank, world).
std::unique_ptr<BatchSource> make_train_source(const RunConfig& config, int rank, int world);

}  // namespace lrsa::train
