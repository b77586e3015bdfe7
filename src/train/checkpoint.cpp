#include "lrsa/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lrsa/core/error.h"
#include "model/file_io.h"

namespace lrsa::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "manifest.json";

void fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  LRSA_CHECK(fd >= 0, "checkpoint: cannot open {} for fsync: {}", path.string(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  LRSA_CHECK(rc == 0, "checkpoint: fsync of {} failed: {}", path.string(), std::strerror(err));
}

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

// Every temporary directory under the root starts with this; latest_valid_checkpoint removes them.
constexpr const char* kTempPrefix = ".tmp-";

// Renames a step directory to a temporary name, so it leaves list_checkpoints in one atomic step
// and a crash while it is being deleted leaves only a temporary directory, never a partial step.
fs::path retire_step_dir(const fs::path& dir, const char* why) {
  const fs::path retired = dir.parent_path() / fmt::format("{}{}-{}-{}", kTempPrefix, why, dir.filename().string(), ::getpid());
  std::error_code ec;
  fs::remove_all(retired, ec);
  fs::rename(dir, retired, ec);
  LRSA_CHECK(!ec, "checkpoint: cannot move {} aside to {}: {}", dir.string(), retired.string(), ec.message());
  return retired;
}

}  // namespace

uint64_t file_hash(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  LRSA_CHECK(in.good(), "checkpoint: cannot read {}: {}", path.string(), std::strerror(errno));
  std::vector<char> buffer(size_t(1) << 20);
  uint64_t h = 0x9E3779B97F4A7C15ull, length = 0;
  while (in) {
    in.read(buffer.data(), std::streamsize(buffer.size()));
    const size_t n = size_t(in.gcount());
    length += n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, buffer.data() + i, 8);
      h = (h ^ w) * 0xFF51AFD7ED558CCDull;
      h = (h << 31) | (h >> 33);
    }
    for (; i < n; ++i) h = (h ^ uint8_t(buffer[i])) * 0x100000001B3ull;
  }
  h ^= length;
  h = (h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}

int64_t checkpoint_step(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return -1;
  const std::string digits = name.substr(5);
  if (digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

fs::path publish_checkpoint(const fs::path& root, int64_t step, const std::function<void(const fs::path&)>& write,
                            dist::Comm& group) {
  std::error_code ec;
  std::string tmp_name, setup_error;
  if (group.is_root()) {
    fs::create_directories(root, ec);
    tmp_name = fmt::format("{}{}-{}", kTempPrefix, step_name(step), ::getpid());
    if (ec) {
      setup_error = fmt::format("checkpoint: cannot create {}: {}", root.string(), ec.message());
    } else {
      fs::remove_all(root / tmp_name, ec);
      fs::create_directory(root / tmp_name, ec);
      if (ec) setup_error = fmt::format("checkpoint: cannot create {}: {}", (root / tmp_name).string(), ec.message());
    }
  }
  setup_error = group.broadcast(setup_error, 0, "checkpoint setup");
  LRSA_CHECK(setup_error.empty(), "{}", setup_error);
  const fs::path tmp = root / group.broadcast(tmp_name, 0, "checkpoint setup");
  const fs::path final_dir = root / step_name(step);
  std::exception_ptr write_error;
  try {
    write(tmp);
  } catch (...) {
    write_error = std::current_exception();
  }
  // Every rank's files are complete (or some rank failed) once all ranks get here.
  if (!group.all_true(write_error == nullptr, "checkpoint write")) {
    if (group.is_root()) fs::remove_all(tmp, ec);
    if (write_error) std::rethrow_exception(write_error);
    fail("checkpoint {}: another rank failed to write its files (see its log)", final_dir.string());
  }
  if (!group.is_root()) return final_dir;
  try {
    nlohmann::ordered_json manifest;
    manifest["step"] = step;
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(tmp))
      if (entry.is_regular_file() && entry.path().filename() != kManifest) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      manifest["files"][f.filename().string()] = {{"bytes", fs::file_size(f)}, {"hash", hex64(file_hash(f))}};
      fsync_path(f, false);
    }
    // Checked writes (a full disk is an error naming the file, never a truncated manifest).
    model::write_file_atomic(tmp / kManifest, manifest.dump(2) + "\n");
    fsync_path(tmp / kManifest, false);
    fsync_path(tmp, true);
    // Replacing a checkpoint of the same step: the old one is moved aside, the new one renamed in,
    // and only then is the old one deleted (a crash in between leaves no step-N, never a partial one).
    std::optional<fs::path> replaced;
    if (fs::exists(final_dir)) replaced = retire_step_dir(final_dir, "replaced");
    fs::rename(tmp, final_dir, ec);
    if (ec && replaced) {
      std::error_code restore_ec;  // put the old one back; the rename error is the one reported
      fs::rename(*replaced, final_dir, restore_ec);
    }
    LRSA_CHECK(!ec, "checkpoint: cannot publish {}: {}", final_dir.string(), ec.message());
    fsync_path(root, true);
    if (replaced) fs::remove_all(*replaced, ec);
    return final_dir;
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

std::string verify_checkpoint(const fs::path& dir) {
  const fs::path manifest_path = dir / kManifest;
  if (!fs::exists(manifest_path)) return "no manifest.json (incomplete checkpoint)";
  nlohmann::json manifest;
  try {
    std::ifstream in(manifest_path);
    manifest = nlohmann::json::parse(in);
    if (!manifest.contains("files") || !manifest["files"].is_object()) return "manifest.json has no file list";
    for (const auto& [name, info] : manifest["files"].items()) {
      const fs::path f = dir / name;
      if (!fs::exists(f)) return fmt::format("{} is missing", name);
      if (fs::file_size(f) != info.at("bytes").get<uint64_t>())
        return fmt::format("{} has {} bytes, manifest says {}", name, fs::file_size(f), info.at("bytes").get<uint64_t>());
      if (hex64(file_hash(f)) != info.at("hash").get<std::string>()) return fmt::format("{} is corrupt (hash mismatch)", name);
    }
  } catch (const std::exception& e) {
    return fmt::format("manifest.json unreadable: {}", e.what());
  }
  return "";
}

std::vector<fs::path> list_checkpoints(const fs::path& root) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return dirs;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && checkpoint_step(entry.path()) >= 0) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) { return checkpoint_step(a) > checkpoint_step(b); });
  return dirs;
}

std::optional<fs::path> latest_valid_checkpoint(const fs::path& root, const std::function<void(const std::string&)>& warn) {
  std::error_code ec;
  if (fs::is_directory(root, ec)) {
    for (const auto& entry : fs::directory_iterator(root))
      if (entry.is_directory() && entry.path().filename().string().rfind(kTempPrefix, 0) == 0) fs::remove_all(entry.path(), ec);
  }
  for (const fs::path& dir : list_checkpoints(root)) {
    const std::string problem = verify_checkpoint(dir);
    if (problem.empty()) return dir;
    warn(fmt::format("skipping checkpoint {}: {}", dir.string(), problem));
  }
  return std::nullopt;
}

void prune_checkpoints(const fs::path& root, int64_t keep_last) {
  if (keep_last <= 0) return;
  const std::vector<fs::path> dirs = list_checkpoints(root);
  if (dirs.size() <= size_t(keep_last)) return;
  // All renames first (durable once the directory is synced), then the slow deletes.
  std::vector<fs::path> retired;
  for (size_t i = size_t(keep_last); i < dirs.size(); ++i) retired.push_back(retire_step_dir(dirs[i], "pruned"));
  fsync_path(root, true);
  for (const fs::path& dir : retired) fs::remove_all(dir);
}

}  // namespace lrsa::train
