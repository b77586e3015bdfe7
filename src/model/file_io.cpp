#include "model/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lrsa/core/error.h"

namespace lrsa::model {

namespace {

void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  LRSA_CHECK(fd >= 0, "{}: cannot open directory to sync it: {}", dir.string(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  LRSA_CHECK(rc == 0, "{}: fsync of directory failed: {}", dir.string(), std::strerror(err));
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
  // A hidden name unique per process and call: concurrent writers never share a temporary.
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path dir = target_.parent_path().empty() ? "." : target_.parent_path();
  temp_ = dir / fmt::format(".{}.tmp.{}.{}", target_.filename().string(), ::getpid(), counter++);
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  LRSA_CHECK(fd_ >= 0, "{}: cannot create temporary file {}: {}", target_.string(), temp_.string(),
             std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  LRSA_CHECK(fd_ >= 0, "{}: write after commit", target_.string());
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    LRSA_CHECK(n > 0, "{}: write failed: {}", target_.string(), n < 0 ? std::strerror(errno) : "wrote 0 bytes");
    p += n;
    bytes -= size_t(n);
  }
}

void AtomicFile::commit() {
  LRSA_CHECK(fd_ >= 0, "{}: commit called twice", target_.string());
  LRSA_CHECK(::fsync(fd_) == 0, "{}: fsync failed: {}", target_.string(), std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0 || ::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_.c_str());
    fail("{}: cannot move {} into place: {}", target_.string(), temp_.string(), std::strerror(err));
  }
  fsync_directory(target_.parent_path().empty() ? "." : target_.parent_path());
}

void write_file_atomic(const std::filesystem::path& target, std::string_view contents) {
  AtomicFile file(target);
  file.write(contents.data(), contents.size());
  file.commit();
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  LRSA_CHECK(in.good(), "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  LRSA_CHECK(!in.bad(), "{}: read failed", path.string());
  return std::move(text).str();
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
}

}  // namespace lrsa::model
