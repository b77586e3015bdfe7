#include <catch2/catch.hpp>

#include "lrsa/ops/elementwise.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

// fp32 arithmetic rounded once to the storage dtype: the exact expected result.
std::vector<double> add_ref(const std::vector<double>& a, const std::vector<double>& b, DType dtype) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = double(float(a[i]) + float(b[i]));
  return round_to(out, dtype);
}

std::vector<double> scale_ref(const std::vector<double>& x, float s, DType dtype) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = double(float(x[i]) * s);
  return round_to(out, dtype);
}

}  // namespace

TEST_CASE("add, add_ and scale_ compute in fp32 and round once", "[ops]") {
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (const Shape& shape : {Shape{1}, Shape{7, 13}, Shape{3, 50, 400}}) {  // the last one is parallel
      CAPTURE(dtype_name(dtype), shape_str(shape));
      const Tensor a = randn(shape, 1, dtype), b = randn(shape, 2, dtype);
      const auto av = a.to_doubles(), bv = b.to_doubles();
      Tensor out = Tensor::empty(shape, dtype);
      ops::add(a, b, out);
      CHECK(out.to_doubles() == add_ref(av, bv, dtype));
      Tensor y = a.clone();
      ops::add_(y, b);
      CHECK(y.to_doubles() == add_ref(av, bv, dtype));
      ops::add(y, y, y);  // out may alias both inputs
      CHECK(y.to_doubles() == add_ref(add_ref(av, bv, dtype), add_ref(av, bv, dtype), dtype));
      Tensor x = a.clone();
      ops::scale_(x, 0.3f);
      CHECK(x.to_doubles() == scale_ref(av, 0.3f, dtype));
    }
  }
}

TEST_CASE("elementwise ops reject bad arguments with clear errors", "[ops]") {
  const Tensor a = randn({4, 5}, 1);
  Tensor out = Tensor::empty({4, 5}, DType::F32);
  CHECK_THROWS_WITH(ops::add(a, randn({5, 4}, 2), out), Catch::Contains("add: b must have shape [4, 5], got f32[5, 4]"));
  CHECK_THROWS_WITH(ops::add(a, randn({4, 5}, 2, DType::BF16), out), Catch::Contains("add: b must be f32, got bf16[4, 5]"));
  Tensor y = a.clone();
  CHECK_THROWS_WITH(ops::add_(y, randn({4, 6}, 2)), Catch::Contains("add_: x must have shape [4, 5]"));
  Tensor i = Tensor::zeros({3}, DType::I32);
  CHECK_THROWS_WITH(ops::scale_(i, 2.0f), Catch::Contains("scale_: x must be f32 or bf16, got i32[3]"));
  Tensor strided = Tensor::zeros({4, 6}, DType::F32).slice(1, 0, 5);
  CHECK_THROWS_WITH(ops::add(a, a, strided), Catch::Contains("add: out must be contiguous"));
}

TEST_CASE("elementwise ops on CUDA match the CPU exactly", "[ops][cuda]") {
  const Device gpu = Device::cuda(0);
  for (DType dtype : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dtype));
    const Tensor a = randn({33, 1027}, 1, dtype), b = randn({33, 1027}, 2, dtype);
    const auto expected = add_ref(a.to_doubles(), b.to_doubles(), dtype);
    Tensor out = Tensor::empty({33, 1027}, dtype, gpu);
    ops::add(a.to(gpu), b.to(gpu), out);
    CHECK(out.to_doubles() == expected);
    Tensor y = a.to(gpu).clone();
    ops::add_(y, b.to(gpu));
    CHECK(y.to_doubles() == expected);
    ops::scale_(y, -1.7f);
    CHECK(y.to_doubles() == scale_ref(expected, -1.7f, dtype));
  }
}
