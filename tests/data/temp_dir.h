#pragma once
// A fresh directory per test executable run (CTest runs test files in parallel), removed at exit.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace lrsa::test {

struct TempDir {
  std::filesystem::path path;
  TempDir() : path(std::filesystem::temp_directory_path() / ("lrsa-data-tests-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

inline const std::filesystem::path& temp_dir() {
  static const TempDir dir;
  return dir.path;
}

inline std::string write_file(const std::string& name, const std::string& text) {
  const std::filesystem::path p = temp_dir() / name;
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

}  // namespace lrsa::test
