#include "lrsa/data/loader.h"

#include <algorithm>
#include <numeric>

#include "lrsa/core/error.h"
#include "lrsa/core/rng.h"

namespace lrsa::data {

std::vector<int32_t> next_token_targets(const Batch& batch) {
  std::vector<int32_t> targets(batch.labels.size(), kIgnoreLabel);
  for (size_t d = 0; d + 1 < batch.cu_seqlens.size(); ++d)
    for (int64_t t = batch.cu_seqlens[d]; t + 1 < batch.cu_seqlens[d + 1]; ++t)
      targets[size_t(t)] = batch.labels[size_t(t) + 1];
  return targets;
}

nlohmann::json Cursor::to_json() const {
  return {{"epoch", epoch}, {"index", index}, {"seed", seed}, {"world", world}, {"documents", documents},
          {"max_seq_len", max_seq_len}};
}

Cursor Cursor::from_json(const nlohmann::json& j) {
  LRSA_CHECK(j.is_object(), "data cursor: expected a JSON object, got {}", j.dump());
  auto get = [&](const char* name) -> const nlohmann::json& {
    auto it = j.find(name);
    LRSA_CHECK(it != j.end() && it->is_number_integer(), "data cursor: field '{}' missing or not an integer in {}",
               name, j.dump());
    return *it;
  };
  Cursor c;
  c.epoch = get("epoch").get<int64_t>();
  c.index = get("index").get<int64_t>();
  c.seed = get("seed").get<uint64_t>();
  c.world = get("world").get<int>();
  c.documents = get("documents").get<int64_t>();
  c.max_seq_len = get("max_seq_len").get<int64_t>();
  return c;
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options)
    : dataset_(std::move(dataset)), options_(options) {
  LRSA_CHECK(dataset_ && dataset_->size() > 0, "data loader: the dataset is empty");
  LRSA_CHECK(options.world >= 1 && options.rank >= 0 && options.rank < options.world,
             "data loader: rank {} is not in [0, world = {})", options.rank, options.world);
  LRSA_CHECK(options.prefetch >= 0, "data loader: prefetch must be >= 0, got {}", options.prefetch);
  LRSA_CHECK(options.max_seq_len >= dataset_->max_tokens(),
             "data loader: max_seq_len {} is shorter than the dataset's documents (up to {} tokens); load the "
             "dataset with max_tokens <= max_seq_len",
             options.max_seq_len, dataset_->max_tokens());
  batches_in_epoch(0);  // fails now, not in the worker, when the data cannot feed every rank
  if (options.prefetch > 0) thread_ = std::thread([this] { worker(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const DataLoader::EpochPlan> DataLoader::plan(int64_t epoch) const {
  std::lock_guard lock(plan_mutex_);
  if (plan_ && plan_->epoch == epoch) return plan_;
  auto p = std::make_shared<EpochPlan>();
  p->epoch = epoch;
  const int64_t n = dataset_->size();
  p->order.resize(size_t(n));
  std::iota(p->order.begin(), p->order.end(), int64_t(0));
  if (options_.shuffle) {
    // Fisher-Yates with Philox draws keyed by (seed, epoch): the same permutation everywhere.
    for (int64_t i = n - 1; i > 0; --i) {
      const Philox4 r = philox4x32_10(uint64_t(i), uint64_t(epoch), options_.seed);
      const uint64_t bits = (uint64_t(r.v[0]) << 32) | r.v[1];
      const auto j = int64_t(bits % uint64_t(i + 1));  // bias below 2^-40 for any realistic n
      std::swap(p->order[size_t(i)], p->order[size_t(j)]);
    }
  }
  p->sequence_start.push_back(0);
  int64_t filled = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t len = dataset_->length(p->order[size_t(k)]);
    if (filled > 0 && filled + len > options_.max_seq_len) {
      p->sequence_start.push_back(k);
      filled = 0;
    }
    filled += len;
  }
  p->sequence_start.push_back(n);
  const int64_t sequences = int64_t(p->sequence_start.size()) - 1;
  LRSA_CHECK(sequences >= options_.world,
             "data loader: the dataset packs into {} sequences of up to {} tokens in epoch {}, fewer than the {} "
             "data-parallel ranks",
             sequences, options_.max_seq_len, epoch, options_.world);
  plan_ = std::move(p);
  return plan_;
}

int64_t DataLoader::batches_in_epoch(int64_t epoch) const {
  return (int64_t(plan(epoch)->sequence_start.size()) - 1) / options_.world;
}

Batch DataLoader::batch_at(int64_t epoch, int64_t index) const {
  const std::shared_ptr<const EpochPlan> p = plan(epoch);
  const int64_t batches = (int64_t(p->sequence_start.size()) - 1) / options_.world;
  LRSA_CHECK(epoch >= 0 && index >= 0 && index < batches, "data loader: no batch {} in epoch {} ({} batches)", index,
             epoch, batches);
  const int64_t s = index * options_.world + options_.rank;
  Batch b;
  b.cu_seqlens.push_back(0);
  for (int64_t k = p->sequence_start[size_t(s)]; k < p->sequence_start[size_t(s) + 1]; ++k) {
    const int64_t doc = p->order[size_t(k)];
    const std::span<const int32_t> ids = dataset_->input_ids(doc), labels = dataset_->labels(doc);
    b.input_ids.insert(b.input_ids.end(), ids.begin(), ids.end());
    b.labels.insert(b.labels.end(), labels.begin(), labels.end());
    for (size_t t = 0; t < ids.size(); ++t) b.positions.push_back(int32_t(t));
    // The first label of a document is nobody's target.
    b.trained_tokens += std::count_if(labels.begin() + 1, labels.end(), [](int32_t l) { return l != kIgnoreLabel; });
    b.cu_seqlens.push_back(int64_t(b.input_ids.size()));
  }
  return b;
}

void DataLoader::advance(int64_t& epoch, int64_t& index) const {
  if (++index >= batches_in_epoch(epoch)) {
    ++epoch;
    index = 0;
  }
}

Cursor DataLoader::make_cursor(int64_t epoch, int64_t index) const {
  return Cursor{epoch, index, options_.seed, options_.world, dataset_->size(), options_.max_seq_len};
}

Cursor DataLoader::cursor() const {
  std::lock_guard lock(mutex_);
  return make_cursor(epoch_, index_);
}

void DataLoader::restore(const Cursor& c) {
  const Cursor mine = make_cursor(c.epoch, c.index);
  LRSA_CHECK(c == mine,
             "data loader: cursor {} belongs to another data plan (this loader: seed {}, world {}, {} documents, "
             "max_seq_len {})",
             c.to_json().dump(), options_.seed, options_.world, dataset_->size(), options_.max_seq_len);
  LRSA_CHECK(c.epoch >= 0 && c.index >= 0 && c.index < batches_in_epoch(c.epoch),
             "data loader: cursor {} is past the end of epoch {} ({} batches)", c.to_json().dump(), c.epoch,
             batches_in_epoch(c.epoch));
  {
    std::lock_guard lock(mutex_);
    epoch_ = produce_epoch_ = c.epoch;
    index_ = produce_index_ = c.index;
    ready_.clear();
    error_ = nullptr;
    ++generation_;
  }
  cv_.notify_all();
}

Batch DataLoader::next() {
  if (options_.prefetch == 0) {
    std::lock_guard lock(mutex_);
    Batch b = batch_at(epoch_, index_);
    advance(epoch_, index_);
    return b;
  }
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return !ready_.empty() || error_; });
  if (ready_.empty()) std::rethrow_exception(error_);
  Prefetched p = std::move(ready_.front());
  ready_.pop_front();
  epoch_ = p.epoch_after;
  index_ = p.index_after;
  lock.unlock();
  cv_.notify_all();
  return std::move(p.batch);
}

void DataLoader::worker() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || (!error_ && ready_.size() < size_t(options_.prefetch)); });
    if (stop_) return;
    int64_t epoch = produce_epoch_, index = produce_index_;
    const uint64_t generation = generation_;
    lock.unlock();
    Batch b;
    std::exception_ptr error;
    try {
      b = batch_at(epoch, index);
      advance(epoch, index);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (generation != generation_) continue;  // restore() moved the cursor meanwhile
    if (error) {
      error_ = error;
    } else {
      ready_.push_back(Prefetched{std::move(b), epoch, index});
      produce_epoch_ = epoch;
      produce_index_ = index;
    }
    cv_.notify_all();
  }
}

}  // namespace lrsa::data
