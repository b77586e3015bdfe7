// Shared Catch2 main. A run that selects [cuda] tests on a machine without a usable GPU prints
// the reason and exits 77, which CTest reports as "skipped" (never as passed).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "lrsa/core/device.h"

int main(int argc, char** argv) {
  bool selects_cuda = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.find("[cuda]") != std::string::npos && arg.find("~[cuda]") == std::string::npos) selects_cuda = true;
  }
  if (selects_cuda && !lrsa::cuda_available()) {
    std::printf("SKIPPED: CUDA tests need a GPU: %s\n", lrsa::cuda_unavailable_reason().c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
