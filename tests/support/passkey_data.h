#pragma once
// Synthetic passkey QA files for the tests that train or evaluate (the generator behind
// `lrsa-train make-data --kind passkey`).
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "lrsa/data/synthetic.h"

namespace lrsa::test {

// <tmp>/lrsa-<name>-<pid>, created empty.
inline std::filesystem::path fresh_test_dir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / fmt::format("lrsa-{}-{}", name, ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// `samples` passkey QA lines with `context_tokens` tokens of filler each, a function of `seed`.
inline void write_passkey_jsonl(const std::filesystem::path& path, int64_t samples, int64_t context_tokens,
                                uint64_t seed) {
  data::SyntheticQaOptions o;
  o.kind = "passkey";
  o.output_path = path.string();
  o.num_samples = samples;
  o.context_tokens = context_tokens;
  o.seed = seed;
  data::write_synthetic_qa(o);
}

}  // namespace lrsa::test
