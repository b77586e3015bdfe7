#include <catch2/catch.hpp>

#include "lrsa/ops/embedding.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

// Ids with many repeats (so the scatter must sum) and both ends of the vocabulary.
std::vector<int64_t> make_ids(int64_t N, int64_t V) {
  std::vector<int64_t> ids;
  for (int64_t n = 0; n < N; ++n) ids.push_back(n % 3 == 0 ? 0 : n % 3 == 1 ? V - 1 : (n * 7919) % V);
  return ids;
}

// dtable0 + scatter of dout, rows summed in token order in Acc. With float this is what the
// contract promises bit for bit; with double it is the accurate reference.
template <typename Acc>
std::vector<double> scatter(const Tensor& dtable0, const Tensor& dout, const std::vector<int64_t>& ids) {
  const int64_t C = dtable0.size(1);
  const auto t0 = dtable0.to_doubles(), d = dout.to_doubles();
  std::vector<Acc> table(t0.begin(), t0.end());
  for (size_t n = 0; n < ids.size(); ++n)
    for (int64_t c = 0; c < C; ++c) table[size_t(ids[n] * C + c)] += Acc(d[n * size_t(C) + size_t(c)]);
  return std::vector<double>(table.begin(), table.end());
}

}  // namespace

TEST_CASE("embedding forward gathers rows exactly (f32 and bf16)", "[ops]") {
  const int64_t V = 50, C = 37, N = 29;
  const auto ids = make_ids(N, V);
  const Tensor id_tensor = Tensor::from_ints(ids, {N});
  for (DType dtype : {DType::F32, DType::BF16}) {
    const Tensor table = randn({V, C}, 1, dtype);
    Tensor out = Tensor::empty({N, C}, dtype);
    ops::embedding_forward(id_tensor, table, out);
    const auto tv = table.to_doubles();
    std::vector<double> ref;
    for (int64_t id : ids) ref.insert(ref.end(), tv.begin() + id * C, tv.begin() + (id + 1) * C);
    CHECK(out.to_doubles() == ref);
  }
}

TEST_CASE("embedding backward sums repeated ids in token order, deterministically", "[ops]") {
  const int64_t V = 40, C = 300, N = 500;  // several column blocks, parallel
  const auto ids = make_ids(N, V);
  const Tensor id_tensor = Tensor::from_ints(ids, {N});
  for (DType dtype : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dtype));
    const Tensor dout = randn({N, C}, 2, dtype), dtable0 = randn({V, C}, 3);
    Tensor dtable = dtable0.clone();
    ops::embedding_backward(dout, id_tensor, dtable);
    CHECK(dtable.to_doubles() == scatter<float>(dtable0, dout, ids));
    check_close(dtable.to_doubles(), scatter<double>(dtable0, dout, ids), 1e-5);  // accurate, not just reproducible
  }
}

TEST_CASE("embedding rejects bad ids and arguments with clear errors", "[ops]") {
  const Tensor table = randn({10, 4}, 1);
  Tensor out = Tensor::empty({3, 4}, DType::F32);
  CHECK_THROWS_WITH(ops::embedding_forward(Tensor::from_ints({1, 10, 2}, {3}), table, out),
                    Catch::Contains("embedding_forward: ids[1] = 10 is outside the vocabulary [0, 10)"));
  CHECK_THROWS_WITH(ops::embedding_forward(Tensor::from_ints({1, -1, 2}, {3}), table, out), Catch::Contains("ids[1] = -1"));
  CHECK_THROWS_WITH(ops::embedding_forward(Tensor::from_ints({1, 2, 3}, {3}, DType::I64), table, out),
                    Catch::Contains("embedding_forward: ids must be i32, got i64[3]"));
  Tensor out_bf16 = Tensor::empty({3, 4}, DType::BF16);
  CHECK_THROWS_WITH(ops::embedding_forward(Tensor::from_ints({1, 2, 3}, {3}), table, out_bf16),
                    Catch::Contains("embedding_forward: out must be f32, got bf16[3, 4]"));
  Tensor dtable_bf16 = Tensor::zeros({10, 4}, DType::BF16);
  CHECK_THROWS_WITH(ops::embedding_backward(randn({3, 4}, 2), Tensor::from_ints({1, 2, 3}, {3}), dtable_bf16),
                    Catch::Contains("embedding_backward: dtable must be f32, got bf16[10, 4]"));
  Tensor dtable = Tensor::zeros({10, 4}, DType::F32);
  CHECK_THROWS_WITH(ops::embedding_backward(randn({3, 5}, 2), Tensor::from_ints({1, 2, 3}, {3}), dtable),
                    Catch::Contains("embedding_backward: dout must have shape [3, 4], got f32[3, 5]"));
}

TEST_CASE("embedding on CUDA matches the CPU; its backward is deterministic", "[ops][cuda]") {
  const int64_t V = 1000, C = 256, N = 777;
  const auto ids = make_ids(N, V);
  const Tensor id_tensor = Tensor::from_ints(ids, {N});
  const Device gpu = Device::cuda(0);
  for (DType dtype : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dtype));
    const Tensor table = randn({V, C}, 4, dtype), dout = randn({N, C}, 5, dtype), dtable0 = randn({V, C}, 6);
    Tensor out_cpu = Tensor::empty({N, C}, dtype), out_gpu = Tensor::empty({N, C}, dtype, gpu);
    ops::embedding_forward(id_tensor, table, out_cpu);
    ops::embedding_forward(id_tensor.to(gpu), table.to(gpu), out_gpu);
    CHECK(out_gpu.to_doubles() == out_cpu.to_doubles());
    Tensor dtable_cpu = dtable0.clone(), dtable_gpu = dtable0.to(gpu), dtable_gpu2 = dtable0.to(gpu);
    ops::embedding_backward(dout, id_tensor, dtable_cpu);
    ops::embedding_backward(dout.to(gpu), id_tensor.to(gpu), dtable_gpu);
    ops::embedding_backward(dout.to(gpu), id_tensor.to(gpu), dtable_gpu2);
    CHECK(dtable_gpu2.to_doubles() == dtable_gpu.to_doubles());
    check_rule(dtable_gpu.to_doubles(), dtable_cpu.to_doubles(), scatter<double>(dtable0, dout, ids));
  }
}
