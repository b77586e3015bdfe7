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
  Tensor columns = Tensor::zeros({5, 4}, DType::F32).transpose(0, 1);  // [4, 5], rows not contiguous
  CHECK_THROWS_WITH(ops::add(a, a, columns),
                    Catch::Contains("add: out must be contiguous after its first dimension, got f32[4, 5]"));
  Tensor strided = Tensor::zeros({4, 6}, DType::F32).slice(1, 0, 5);
  CHECK_THROWS_WITH(ops::scale_(strided, 2.0f), Catch::Contains("scale_: x must be contiguous"));
}

namespace {

// out = a + b on row-strided views (dimension 0 strided, the rest contiguous, as slices of a
// fused [T, 3, H, D] buffer are), checked against add_ref; the columns outside out's view keep
// their values. Each operand gets its own row stride; width 64 takes the 16-byte packs on the
// GPU, width 13 the scalar path.
void check_row_strided_add(Device device) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (const auto& [rows, width] : {std::pair<int64_t, int64_t>{37, 64}, {9, 13}}) {
      CAPTURE(dtype_name(dtype), rows, width);
      const Tensor a_buf = randn({rows, width + 32}, 1, dtype), b_buf = randn({rows, width + 8}, 2, dtype);
      const Tensor out_init = randn({rows, 3, width}, 3, dtype);
      const Tensor a = a_buf.to(device).slice(1, 16, 16 + width), b = b_buf.to(device).slice(1, 0, width);
      Tensor out_buf = out_init.to(device);
      Tensor out = out_buf.select(1, 1);  // [rows, width], row stride 3 * width
      ops::add(a, b, out);
      CHECK(out.to_doubles() == add_ref(a.to_doubles(), b.to_doubles(), dtype));
      CHECK(out_buf.select(1, 0).to_doubles() == out_init.select(1, 0).to_doubles());
      CHECK(out_buf.select(1, 2).to_doubles() == out_init.select(1, 2).to_doubles());
      const auto before = out.to_doubles();
      ops::add(out, a, out);  // in place on a view, as a grouped LRSA pass's dQ is added
      CHECK(out.to_doubles() == add_ref(before, a.to_doubles(), dtype));
    }
  }
}

}  // namespace

TEST_CASE("add takes row-strided views", "[ops]") { check_row_strided_add(Device::cpu()); }

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
  check_row_strided_add(gpu);
}
