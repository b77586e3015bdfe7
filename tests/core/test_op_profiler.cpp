// The op profiler: with LRSA_PROFILE_OPS=1, CUDA ops entered through the dispatch macro are
// timed by name (outermost op only); CPU ops are never recorded. This file runs in its own
// process (one CTest entry per file), so setting the variable before the first op is enough.
#include <catch2/catch.hpp>

#include <cstdlib>

#include "lrsa/core/op_profiler.h"
#include "lrsa/core/tensor.h"
#include "lrsa/ops/elementwise.h"

namespace lrsa {
namespace {

void enable_profiling() {
  ::setenv("LRSA_PROFILE_OPS", "1", 1);
  REQUIRE(profiler::enabled());
}

TEST_CASE("op profiler records nothing for CPU ops", "[op_profiler]") {
  enable_profiling();
  Tensor a = Tensor::full({64}, 1.0, DType::F32, Device::cpu());
  Tensor b = Tensor::full({64}, 2.0, DType::F32, Device::cpu());
  ops::add_(a, b);
  CHECK(profiler::report().empty());
}

TEST_CASE("op profiler times CUDA ops by name and forgets them on reset", "[op_profiler][cuda]") {
  enable_profiling();
  profiler::reset();
  Tensor a = Tensor::full({1 << 20}, 1.0, DType::F32, Device::cuda(0));
  Tensor b = Tensor::full({1 << 20}, 2.0, DType::F32, Device::cuda(0));
  for (int i = 0; i < 3; ++i) ops::add_(a, b);
  ops::scale_(a, 0.5f);
  const std::string table = profiler::report();
  INFO(table);
  CHECK(table.find("add_") != std::string::npos);
  CHECK(table.find("        3 ") != std::string::npos);  // add_'s call count
  CHECK(table.find("scale_") != std::string::npos);
  CHECK(table.find("GPU span") != std::string::npos);
  CHECK(a.to(Device::cpu()).to_doubles()[0] == Approx(3.5));
  profiler::reset();
  CHECK(profiler::report().empty());
}

}  // namespace
}  // namespace lrsa
