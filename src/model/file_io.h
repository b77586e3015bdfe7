#pragma once
// File helpers of the model layer (checkpoints, configs, exports).
// Crash-safe file replacement: data goes to a temporary file in the target's directory, which is
// fsync'ed, renamed over the target, and the directory fsync'ed, so the target path only ever
// names the old complete file or the new complete file.
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace lrsa::model {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();  // not committed: closes and removes the temporary file
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void commit();  // fsync, rename over the target, fsync the directory

 private:
  std::filesystem::path target_, temp_;
  int fd_ = -1;
};

void write_file_atomic(const std::filesystem::path& target, std::string_view contents);

// Whole-file reads; errors name the file (and for JSON the parser's position).
std::string read_text_file(const std::filesystem::path& path);
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace lrsa::model
