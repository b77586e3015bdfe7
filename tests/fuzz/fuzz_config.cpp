// libFuzzer target for the run-config loader (src/train/config.cpp). Any input must end in a
// config or an lrsa::Error: never a crash, a sanitizer report or another exception. A config
// that loads must dump to JSON that loads back to the same dump.
//
// Input: leading lines "--set <assignment>" are overrides, the rest is the config text; the
// input size picks the world size (1-4) and whether a GPU is "available", so the batch and
// device rules are exercised too.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lrsa/train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lrsa::train;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  constexpr std::string_view kSet = "--set ";
  while (input.starts_with(kSet)) {
    const size_t end = input.find('\n');
    overrides.emplace_back(input.substr(kSet.size(), end == std::string_view::npos ? end : end - kSet.size()));
    input = end == std::string_view::npos ? std::string_view() : input.substr(end + 1);
  }
  const ConfigContext ctx{1 + int(size % 4), size % 2 == 0};

  std::optional<RunConfig> config;
  try {
    config = load_config_text(input, "fuzz", overrides, ctx);
  } catch (const lrsa::Error&) {
    return 0;  // rejected with a message: the expected outcome for most inputs
  }
  // A valid config must survive dump -> load unchanged; any exception here escapes and is reported.
  const std::string dumped = dump_config(*config);
  if (dump_config(load_config_text(dumped, "fuzz-dump", {}, ctx)) != dumped) __builtin_trap();
  return 0;
}
