// Packing, shuffling, sharding, cursor save/restore and prefetch of the DataLoader.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "lrsa/core/error.h"
#include "lrsa/data/loader.h"

using namespace lrsa;
using namespace lrsa::data;
using V = std::vector<int32_t>;

namespace {

constexpr int64_t kMaxLen = 64;

// 200 documents of 1..kMaxLen tokens; token t of document d is d * 1000 + t (so a document can
// be recognised anywhere), and every third label is ignored.
std::shared_ptr<const Dataset> make_dataset() {
  auto d = std::make_shared<Dataset>(kMaxLen);
  for (int32_t doc = 0; doc < 200; ++doc) {
    const int32_t len = 1 + (doc * 37) % int32_t(kMaxLen);
    V ids, labels;
    for (int32_t t = 0; t < len; ++t) {
      ids.push_back(doc * 1000 + t);
      labels.push_back(t % 3 == 2 ? kIgnoreLabel : doc * 1000 + t);
    }
    labels[0] = ids[0];  // every document has a trained label
    d->add(ids, labels);
  }
  return d;
}

const std::shared_ptr<const Dataset>& dataset() {
  static const std::shared_ptr<const Dataset> d = make_dataset();
  return d;
}

LoaderOptions options(int rank = 0, int world = 1, int prefetch = 2, uint64_t seed = 7) {
  LoaderOptions o;
  o.max_seq_len = kMaxLen;
  o.seed = seed;
  o.rank = rank;
  o.world = world;
  o.prefetch = prefetch;
  return o;
}

// Checks a batch's invariants; returns the documents it holds, in order.
std::vector<int32_t> check_batch(const Batch& b) {
  std::vector<int32_t> docs;
  const size_t T = b.input_ids.size();
  REQUIRE(T >= 1);
  CHECK(int64_t(T) <= kMaxLen);
  CHECK(b.labels.size() == T);
  CHECK(b.positions.size() == T);
  REQUIRE(b.cu_seqlens.size() >= 2);
  CHECK(b.cu_seqlens.front() == 0);
  CHECK(b.cu_seqlens.back() == int64_t(T));
  for (size_t d = 0; d + 1 < b.cu_seqlens.size(); ++d) {
    REQUIRE(b.cu_seqlens[d] < b.cu_seqlens[d + 1]);
    const int32_t doc = b.input_ids[size_t(b.cu_seqlens[d])] / 1000;
    const std::span<const int32_t> want = dataset()->input_ids(doc);
    REQUIRE(int64_t(want.size()) == b.cu_seqlens[d + 1] - b.cu_seqlens[d]);  // whole document, not split
    for (int64_t t = b.cu_seqlens[d]; t < b.cu_seqlens[d + 1]; ++t) {
      CHECK(b.input_ids[size_t(t)] == want[size_t(t - b.cu_seqlens[d])]);
      CHECK(b.labels[size_t(t)] == dataset()->labels(doc)[size_t(t - b.cu_seqlens[d])]);
      CHECK(b.positions[size_t(t)] == t - b.cu_seqlens[d]);
    }
    docs.push_back(doc);
  }
  const V targets = next_token_targets(b);
  CHECK(b.trained_tokens == std::count_if(targets.begin(), targets.end(), [](int32_t x) { return x != kIgnoreLabel; }));
  return docs;
}

std::vector<Batch> take(DataLoader& loader, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(loader.next());
  return out;
}

bool same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].input_ids != b[i].input_ids || a[i].cu_seqlens != b[i].cu_seqlens) return false;
  return true;
}

}  // namespace

TEST_CASE("next-token targets shift within documents only", "[data]") {
  Batch b;
  b.input_ids = {1, 2, 3, 4, 5};
  b.labels = {1, 2, kIgnoreLabel, 4, 5};
  b.cu_seqlens = {0, 3, 5};
  CHECK(next_token_targets(b) == V{2, kIgnoreLabel, kIgnoreLabel, 5, kIgnoreLabel});
}

TEST_CASE("packing keeps documents whole and every document once per epoch", "[data]") {
  DataLoader loader(dataset(), options(0, 1, 0));
  const int64_t n = loader.batches_in_epoch(0);
  std::multiset<int32_t> seen;
  int64_t tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch b = loader.next();
    tokens += int64_t(b.input_ids.size());
    for (int32_t doc : check_batch(b)) seen.insert(doc);
  }
  CHECK(seen.size() == 200);
  CHECK(std::set<int32_t>(seen.begin(), seen.end()).size() == 200);
  CHECK(loader.cursor().epoch == 1);
  CHECK(loader.cursor().index == 0);
  // Greedy packing: a sequence is closed only when the next document does not fit.
  const Batch first = loader.batch_at(0, 0), second = loader.batch_at(0, 1);
  const int64_t next_len = second.cu_seqlens[1];
  CHECK(int64_t(first.input_ids.size()) + next_len > kMaxLen);
  CHECK(tokens * 10 >= 7 * n * kMaxLen);  // reasonably full sequences
}

TEST_CASE("shuffle is a deterministic function of (seed, epoch)", "[data]") {
  DataLoader a(dataset(), options(0, 1, 0, 7)), b(dataset(), options(0, 1, 3, 7)), c(dataset(), options(0, 1, 0, 8));
  const std::vector<Batch> ea = take(a, 10), eb = take(b, 10), ec = take(c, 10);
  CHECK(same(ea, eb));
  CHECK_FALSE(same(ea, ec));
  CHECK(a.batch_at(0, 0).input_ids != a.batch_at(1, 0).input_ids);  // a new order every epoch
  LoaderOptions ordered = options(0, 1, 0);
  ordered.shuffle = false;
  DataLoader o(dataset(), ordered);
  CHECK(check_batch(o.next()).front() == 0);
  CHECK(check_batch(o.next()).front() > 0);
}

TEST_CASE("ranks get disjoint shards covering the epoch but a short tail", "[data]") {
  const int world = 3;
  std::vector<std::unique_ptr<DataLoader>> loaders;
  for (int r = 0; r < world; ++r) loaders.push_back(std::make_unique<DataLoader>(dataset(), options(r, world)));
  const int64_t batches = loaders[0]->batches_in_epoch(0);
  DataLoader single(dataset(), options(0, 1, 0));
  const int64_t sequences = single.batches_in_epoch(0);  // the same plan, unsharded
  CHECK(batches == sequences / world);
  std::map<int32_t, int> owner;
  for (int r = 0; r < world; ++r) {
    CHECK(loaders[size_t(r)]->batches_in_epoch(0) == batches);
    for (int64_t i = 0; i < batches; ++i) {
      const Batch b = loaders[size_t(r)]->next();
      CHECK(b.input_ids == single.batch_at(0, i * world + r).input_ids);  // sequence s goes to rank s % world
      for (int32_t doc : check_batch(b)) {
        CHECK(owner.count(doc) == 0);
        owner[doc] = r;
      }
    }
  }
  // Covered: everything except the dropped tail sequences.
  std::set<int32_t> tail;
  for (int64_t s = batches * world; s < sequences; ++s)
    for (int32_t doc : check_batch(single.batch_at(0, s))) tail.insert(doc);
  CHECK(owner.size() + tail.size() == 200);
}

TEST_CASE("a saved cursor resumes exactly, across epochs and with prefetch", "[data]") {
  for (int prefetch : {0, 1, 4}) {
    INFO("prefetch " << prefetch);
    DataLoader a(dataset(), options(1, 2, prefetch));
    const int64_t per_epoch = a.batches_in_epoch(0);
    take(a, int(per_epoch) - 2);
    const nlohmann::json saved = a.cursor().to_json();
    const std::vector<Batch> after = take(a, 5);  // crosses into epoch 1

    DataLoader b(dataset(), options(1, 2, prefetch));
    take(b, 3);  // somewhere else, with batches already prefetched
    b.restore(Cursor::from_json(nlohmann::json::parse(saved.dump())));
    CHECK(b.cursor().to_json() == saved);
    CHECK(same(take(b, 5), after));
    CHECK(b.cursor() == a.cursor());
    CHECK(a.cursor().epoch == 1);
  }
}

TEST_CASE("loader errors", "[data]") {
  CHECK_THROWS_WITH(DataLoader(dataset(), options(2, 2)), Catch::Contains("rank 2 is not in [0, world = 2)"));
  LoaderOptions short_seq = options();
  short_seq.max_seq_len = kMaxLen - 1;
  CHECK_THROWS_WITH(DataLoader(dataset(), short_seq), Catch::Contains("shorter than the dataset's documents"));
  CHECK_THROWS_WITH(DataLoader(dataset(), options(0, 10000)), Catch::Contains("fewer than the 10000 data-parallel ranks"));
  DataLoader loader(dataset(), options());
  Cursor other = loader.cursor();
  other.seed = 99;
  CHECK_THROWS_WITH(loader.restore(other), Catch::Contains("belongs to another data plan"));
  Cursor past = loader.cursor();
  past.index = loader.batches_in_epoch(0);
  CHECK_THROWS_WITH(loader.restore(past), Catch::Contains("past the end of epoch 0"));
  CHECK_THROWS_WITH(Cursor::from_json(nlohmann::json{{"epoch", 1}}), Catch::Contains("field 'index' missing"));
}
