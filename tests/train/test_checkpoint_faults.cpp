// Checkpoint writes that fail part-way: a full disk (simulated with RLIMIT_FSIZE, SIGXFSZ
// ignored, so writes past the limit fail with EFBIG as they would with ENOSPC) and output paths
// that cannot be created (under a regular file: CI runs as root, which ignores permissions).
// Every failure must be an lrsa::Error naming the path and the OS reason, keep the previous
// checkpoint valid, leave no temporary directory, and keep `--resume auto` on the old checkpoint.
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "lrsa/train/checkpoint.h"
#include "lrsa/train/trainer.h"
#include "model/file_io.h"
#include "support/passkey_data.h"

using namespace lrsa;
using namespace lrsa::train;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("lrsa-faults-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  return dir;
}

// Files larger than max_bytes cannot be written while this lives (the process's "disk" is full).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t max_bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = max_bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = SIG_DFL;
};

bool has_temp_dir(const fs::path& root) {
  for (const auto& e : fs::directory_iterator(root))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) return true;
  return false;
}

std::optional<fs::path> latest(const fs::path& root) {
  return latest_valid_checkpoint(root, [](const std::string&) {});
}

void publish_small(const fs::path& root, int64_t step) {
  publish_checkpoint(root, step, [&](const fs::path& dir) {
    model::write_file_atomic(dir / "state.json", fmt::format("{{\"step\": {}}}\n", step));
  });
}

// The previous checkpoint (step 1) survives a failed publish of step 2 untouched.
void check_previous_kept(const fs::path& root) {
  CHECK_FALSE(fs::exists(root / "step-00000002"));
  CHECK_FALSE(has_temp_dir(root));
  CHECK(verify_checkpoint(root / "step-00000001").empty());
  const auto found = latest(root);
  REQUIRE(found.has_value());
  CHECK(checkpoint_step(*found) == 1);
}

}  // namespace

TEST_CASE("a full disk while writing checkpoint files keeps the previous checkpoint", "[train]") {
  const fs::path root = fresh_dir("fullfile");
  publish_small(root, 1);
  {
    FileSizeLimit full(4096);
    try {
      publish_checkpoint(root, 2, [](const fs::path& dir) {
        model::write_file_atomic(dir / "weights.bin", std::string(64 * 1024, 'w'));
      });
      FAIL("publish_checkpoint succeeded although weights.bin cannot be written");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("weights.bin") && Catch::Contains(std::strerror(EFBIG)));
    }
  }
  check_previous_kept(root);
  fs::remove_all(root);
}

// publish_checkpoint once wrote the manifest through a std::ofstream checked before its
// destructor flushed it, so a full disk published a truncated manifest (and pruning then deleted
// the last valid checkpoint); it now writes it with checked writes.
TEST_CASE("a full disk while writing the manifest keeps the previous checkpoint", "[train]") {
  const fs::path root = fresh_dir("fullmanifest");
  publish_small(root, 1);
  const uint64_t manifest_bytes = fs::file_size(root / "step-00000001" / "manifest.json");
  {
    // state.json (~14 bytes) fits, the manifest (~120 bytes) does not.
    FileSizeLimit full(manifest_bytes / 2);
    try {
      publish_small(root, 2);
      FAIL("publish_checkpoint succeeded although manifest.json cannot be written");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("manifest.json") && Catch::Contains(std::strerror(EFBIG)));
    }
  }
  check_previous_kept(root);
  fs::remove_all(root);
}

TEST_CASE("a checkpoint root that cannot be created is an error naming the path and the reason", "[train]") {
  const fs::path file = fresh_dir("rootfile");
  std::ofstream(file) << "not a directory";
  const fs::path root = file / "checkpoints";
  bool wrote = false;
  try {
    publish_checkpoint(root, 1, [&](const fs::path&) { wrote = true; });
    FAIL("publish_checkpoint succeeded under a regular file");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains(root.string()) && Catch::Contains(std::strerror(ENOTDIR)));
  }
  CHECK_FALSE(wrote);
  CHECK_FALSE(latest(root).has_value());
  fs::remove(file);
}

namespace {

fs::path data_root() {
  static const fs::path root = [] {
    const fs::path r = test::fresh_test_dir("faults-data");
    test::write_passkey_jsonl(r / "train.jsonl", 64, 60, 1);
    return r;
  }();
  return root;
}

RunConfig tiny_run(const fs::path& output_dir, int64_t max_steps) {
  const std::vector<std::string> overrides = {
      "output_dir=" + output_dir.string(), "data.train=" + (data_root() / "train.jsonl").string(),
      "data.eval=" + (data_root() / "train.jsonl").string(),
      fmt::format("schedule.max_steps={}", max_steps), "schedule.warmup_steps=1", "checkpoint.every_steps=2",
      "checkpoint.keep_last=1", "logging.progress=plain"};
  return load_config(std::string(LRSA_SOURCE_DIR) + "/configs/tiny-cpu-smoke.json", overrides, ConfigContext{});
}

}  // namespace

TEST_CASE("training on a full disk fails clearly and resumes from the previous checkpoint", "[train]") {
  const fs::path out = fresh_dir("fullrun");
  const RunConfig first = tiny_run(out, 2);
  REQUIRE(run_training(first, TrainOptions{}).last_step == 2);
  const fs::path root = first.checkpoint.dir;
  const fs::path step2 = root / "step-00000002";
  REQUIRE(verify_checkpoint(step2).empty());
  // The model files (tens of KiB) exceed the limit; metrics.jsonl (a few hundred bytes) does not.
  REQUIRE(fs::file_size(step2 / "model.safetensors") > 16384);

  TrainOptions resume;
  resume.resume = "auto";
  {
    FileSizeLimit full(16384);
    try {
      run_training(tiny_run(out, 4), resume);
      FAIL("training succeeded although its checkpoint cannot be written");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains(root.string()) && Catch::Contains(".safetensors") &&
                               Catch::Contains(std::strerror(EFBIG)));
    }
  }
  CHECK_FALSE(fs::exists(root / "step-00000004"));
  CHECK_FALSE(has_temp_dir(root));
  CHECK(verify_checkpoint(step2).empty());
  const auto found = latest(root);
  REQUIRE(found.has_value());
  CHECK(*found == step2);

  // With space again the run resumes from step 2 and finishes.
  const TrainResult resumed = run_training(tiny_run(out, 4), resume);
  CHECK(resumed.steps.size() == 2);
  CHECK(resumed.last_step == 4);
  CHECK(verify_checkpoint(resumed.last_checkpoint).empty());
  fs::remove_all(out);
}

TEST_CASE("an output directory that cannot be created is an error naming the path and the reason", "[train]") {
  const fs::path file = fresh_dir("outfile");
  std::ofstream(file) << "not a directory";
  const fs::path out = file / "run";
  CHECK_THROWS_WITH(run_training(tiny_run(out, 2), TrainOptions{}),
                    Catch::Contains(out.string()) && Catch::Contains(std::strerror(ENOTDIR)));
  fs::remove(file);
}
