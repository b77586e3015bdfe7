#pragma once
// The real tokenizers live outside the repository (../shared/tokenizers). A test file that needs
// them and cannot find them prints why and exits 77, which CTest reports as skipped (never as
// passed). Such files hold only tests that need the tokenizers, so nothing else is skipped.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "lrsa/data/tokenizer.h"

namespace lrsa::test {

inline std::string shared_tokenizer_path(const std::string& name) {
  const std::string path = std::string(LRSA_SHARED_DIR) + "/tokenizers/" + name + "/tokenizer.json";
  if (!std::filesystem::exists(path)) {
    std::printf("SKIPPED: the %s tokenizer is not at %s (the shared tokenizers are not present)\n", name.c_str(),
                path.c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  return path;
}

// Loaded once per test executable.
inline const data::Tokenizer& shared_tokenizer(const std::string& name) {
  static const data::Tokenizer qwen3 = data::Tokenizer::from_file(shared_tokenizer_path("qwen3"));
  static const data::Tokenizer llama3 = data::Tokenizer::from_file(shared_tokenizer_path("llama3"));
  return name == "qwen3" ? qwen3 : llama3;
}

inline const nlohmann::json& tokenizer_goldens() {
  static const nlohmann::json goldens = [] {
    std::ifstream f(std::string(LRSA_SOURCE_DIR) + "/tests/data/fixtures/tokenizer_goldens.json");
    std::stringstream ss;
    ss << f.rdbuf();
    return nlohmann::json::parse(ss.str());
  }();
  return goldens;
}

}  // namespace lrsa::test
