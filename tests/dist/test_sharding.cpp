// ZeRO-1 shards and the bucket plan of the data-parallel reducer, in one process.
#include <catch2/catch.hpp>

#include "lrsa/dist/data_parallel.h"

using namespace lrsa;
using namespace lrsa::dist;

TEST_CASE("ZeRO-1 shards tile the arena in rank order, 64-element aligned", "[dist]") {
  for (int64_t n : {int64_t(1), int64_t(63), int64_t(64), int64_t(1000), int64_t(494032768)}) {
    for (int world : {1, 2, 3, 8}) {
      int64_t expected_begin = 0;
      for (int r = 0; r < world; ++r) {
        const Range s = shard_range(n, r, world);
        INFO("n " << n << " world " << world << " rank " << r);
        CHECK(s.begin == expected_begin);
        CHECK(s.end >= s.begin);
        if (s.end < n) CHECK(s.size() % 64 == 0);
        CHECK(s.size() <= (n + world - 1) / world + 63);
        expected_begin = s.end;
      }
      CHECK(expected_begin == n);
    }
  }
}

TEST_CASE("buckets hold whole layers of about bucket_bytes plus the non-layer ranges", "[dist]") {
  // 6 layers of 100 elements after a 50-element embedding, then a 30-element tail.
  std::vector<Range> layers;
  for (int64_t l = 0; l < 6; ++l) layers.push_back({50 + 100 * l, 150 + 100 * l});
  const Tensor grads = Tensor::zeros({680}, DType::F32, Device::cpu());
  // 250 elements per bucket: layers {5,4,3}, {2,1,0}, then tail and head.
  DataParallel dp(Comm::world(), Transport::Mpi, grads, grads, layers, 250 * 4, false);
  CHECK(dp.num_buckets() == 4);
  CHECK(dp.shard().begin == 0);
  CHECK(dp.shard().end == 680);
  // One process: reduction is the identity and never blocks.
  dp.arm();
  for (int64_t l = 5; l >= 0; --l) dp.on_grads_ready(l);
  dp.on_grads_ready(DataParallel::kNonLayerGrads);
  dp.finish();
  dp.all_gather_params();
}
