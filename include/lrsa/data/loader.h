#pragma once
// Batching: documents packed into sequences of at most max_seq_len tokens, shuffled, sharded
// over data-parallel ranks, with an exact-resume cursor and a prefetch thread.
//
// Epoch plan (the same on every rank): the documents in a permutation drawn from (seed, epoch)
// (Philox; identity when shuffle is off) are packed greedily in that order: a document that does
// not fit in the current sequence starts the next one, so no document is ever split (the
// dataset already split any longer than max_seq_len). Sequence s of the epoch goes to rank
// s % world; the last (sequences % world) sequences of an epoch are dropped so that every rank
// takes the same number of steps. Epochs follow each other without end.
//
// A batch is one packed sequence (no padding): the attention layer sees its documents through
// cu_seqlens. Labels stay aligned with input_ids; the model (or next_token_targets) shifts them
// within each document.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "lrsa/data/dataset.h"

namespace lrsa::data {

struct Batch {
  std::vector<int32_t> input_ids;   // [T], T <= max_seq_len
  std::vector<int32_t> labels;      // [T] aligned with input_ids, kIgnoreLabel = not trained
  std::vector<int32_t> positions;   // [T] 0, 1, ... restarting at every document
  std::vector<int64_t> cu_seqlens;  // [B + 1] document starts, 0 = s_0 < ... < s_B = T
  int64_t trained_tokens = 0;       // positions with a trained next-token target
};

// targets[t] = labels[t + 1] when t + 1 is in the same document, else kIgnoreLabel: the
// next-token targets of a packed batch (what the cross-entropy compares logits[t] with).
std::vector<int32_t> next_token_targets(const Batch& batch);

// Where a loader stands: `index` batches of this epoch already taken (the same on every rank).
// The other fields identify the plan and are checked on restore.
struct Cursor {
  int64_t epoch = 0;
  int64_t index = 0;
  uint64_t seed = 0;
  int world = 1;
  int64_t documents = 0;
  int64_t max_seq_len = 0;

  nlohmann::json to_json() const;
  static Cursor from_json(const nlohmann::json& j);
  bool operator==(const Cursor&) const = default;
};

struct LoaderOptions {
  int64_t max_seq_len = 4096;
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;
  int world = 1;
  int prefetch = 2;  // batches built ahead by a background thread; 0 builds them in next()
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();
  Cursor cursor() const;                // where next() continues: save it with a checkpoint
  void restore(const Cursor& cursor);   // throws if it belongs to another plan
  // Batches per rank in an epoch (packing, and so this count, varies a little with the order).
  int64_t batches_in_epoch(int64_t epoch) const;
  // The batch at (epoch, index), built directly: what next() returns there.
  Batch batch_at(int64_t epoch, int64_t index) const;

 private:
  struct EpochPlan {
    int64_t epoch = -1;
    std::vector<int64_t> order;           // documents in epoch order
    std::vector<int64_t> sequence_start;  // [sequences + 1] offsets into order
  };
  std::shared_ptr<const EpochPlan> plan(int64_t epoch) const;
  Cursor make_cursor(int64_t epoch, int64_t index) const;
  void advance(int64_t& epoch, int64_t& index) const;
  void worker();

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions options_;

  mutable std::mutex plan_mutex_;
  mutable std::shared_ptr<const EpochPlan> plan_;  // the last plan built

  // Consumer position (next batch next() returns).
  int64_t epoch_ = 0, index_ = 0;

  // Prefetch: the worker builds batches from (produce_epoch_, produce_index_) into ready_,
  // each with the position after it (so the consumer never needs an epoch plan).
  struct Prefetched {
    Batch batch;
    int64_t epoch_after, index_after;
  };
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Prefetched> ready_;
  int64_t produce_epoch_ = 0, produce_index_ = 0;
  uint64_t generation_ = 0;  // bumped by restore(): a batch built for an older one is dropped
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace lrsa::data
