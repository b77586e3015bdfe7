#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>

#include "lrsa/train/checkpoint.h"
#include "lrsa/train/optimizer.h"

using namespace lrsa;
using namespace lrsa::train;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("lrsa-test-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  return dir;
}
void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }
}  // namespace

TEST_CASE("checkpoints publish atomically, verify and prune", "[train]") {
  const fs::path root = fresh_dir("ckpt");
  for (int64_t step : {10, 20, 30}) {
    publish_checkpoint(root, step, [&](const fs::path& dir) {
      write_text(dir / "state.json", fmt::format("{{\"step\": {}}}", step));
      write_text(dir / "weights.bin", std::string(1000 + size_t(step), char(step)));
    });
  }
  REQUIRE(list_checkpoints(root).size() == 3);
  CHECK(checkpoint_step(list_checkpoints(root).front()) == 30);
  for (const fs::path& d : list_checkpoints(root)) CHECK(verify_checkpoint(d).empty());

  // Corrupt the newest (same size, one byte flipped) and truncate the second: resume falls back.
  {
    std::fstream f(root / "step-00000030" / "weights.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('x');
  }
  fs::resize_file(root / "step-00000020" / "weights.bin", 10);
  std::vector<std::string> warnings;
  auto latest = latest_valid_checkpoint(root, [&](const std::string& w) { warnings.push_back(w); });
  REQUIRE(latest.has_value());
  CHECK(checkpoint_step(*latest) == 10);
  REQUIRE(warnings.size() == 2);
  CHECK_THAT(warnings[0], Catch::Contains("step-00000030") && Catch::Contains("corrupt"));
  CHECK_THAT(warnings[1], Catch::Contains("step-00000020") && Catch::Contains("bytes"));

  // A partial checkpoint (no manifest) is skipped; a leftover temporary directory is removed.
  fs::create_directories(root / "step-00000040");
  write_text(root / "step-00000040" / "state.json", "{}");
  fs::create_directories(root / ".tmp-step-00000050-1");
  warnings.clear();
  latest = latest_valid_checkpoint(root, [&](const std::string& w) { warnings.push_back(w); });
  CHECK(checkpoint_step(*latest) == 10);
  CHECK_THAT(warnings[0], Catch::Contains("no manifest"));
  CHECK_FALSE(fs::exists(root / ".tmp-step-00000050-1"));

  // A writer that fails leaves nothing behind and keeps the old checkpoints.
  CHECK_THROWS_WITH(publish_checkpoint(root, 60, [](const fs::path&) { fail("disk full"); }), Catch::Contains("disk full"));
  CHECK_FALSE(fs::exists(root / "step-00000060"));
  for (const auto& e : fs::directory_iterator(root)) CHECK(e.path().filename().string().rfind(".tmp-", 0) != 0);

  prune_checkpoints(root, 2);
  CHECK(list_checkpoints(root).size() == 2);
  fs::remove_all(root);
}

TEST_CASE("pruning and replacing never leave a partial step directory", "[train]") {
  const fs::path root = fresh_dir("ckpt-prune");
  auto publish = [&](int64_t step, const std::string& payload) {
    return publish_checkpoint(root, step, [&](const fs::path& dir) {
      write_text(dir / "a.bin", payload);
      write_text(dir / "b.bin", payload + payload);
    });
  };
  for (int64_t step : {10, 20, 30}) publish(step, fmt::format("step {}", step));
  auto names = [&] {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(root)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  };

  // Pruning deletes whole directories and leaves no temporary one behind.
  prune_checkpoints(root, 1);
  CHECK(names() == std::vector<std::string>{"step-00000030"});

  // Replacing a step: the new content is published, the old directory is gone.
  const fs::path replaced = publish(30, "again");
  CHECK(verify_checkpoint(replaced).empty());
  CHECK(fs::file_size(replaced / "a.bin") == 5);
  CHECK(names() == std::vector<std::string>{"step-00000030"});

  // A kill -9 during a delete leaves a renamed, partial directory: invisible to list_checkpoints,
  // and removed (without a warning) by resume.
  for (const char* leftover : {".tmp-pruned-step-00000020-1", ".tmp-replaced-step-00000030-1"}) {
    fs::create_directories(root / leftover);
    write_text(root / leftover / "b.bin", "partial");
  }
  CHECK(list_checkpoints(root).size() == 1);
  std::vector<std::string> warnings;
  const auto latest = latest_valid_checkpoint(root, [&](const std::string& w) { warnings.push_back(w); });
  REQUIRE(latest.has_value());
  CHECK(checkpoint_step(*latest) == 30);
  CHECK(warnings.empty());
  CHECK(names() == std::vector<std::string>{"step-00000030"});

  CHECK_THROWS_WITH(file_hash(root / "missing.bin"), Catch::Contains("missing.bin") && Catch::Contains("No such file"));
  fs::remove_all(root);
}

TEST_CASE("an unwritable checkpoint root is a clear error", "[train]") {
  if (::geteuid() == 0) {
    // root ignores directory permissions: use a path under a regular file instead.
    const fs::path file = fresh_dir("notadir");
    write_text(file, "x");
    CHECK_THROWS_WITH(publish_checkpoint(file / "ckpt", 1, [](const fs::path&) {}), Catch::Contains("cannot create"));
    fs::remove(file);
  } else {
    CHECK_THROWS_WITH(publish_checkpoint("/proc/lrsa-ckpt", 1, [](const fs::path&) {}), Catch::Contains("cannot create"));
  }
}

TEST_CASE("learning-rate schedule: warmup, cosine and linear decay", "[train]") {
  OptimConfig optim;
  optim.lr = 1.0;
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.max_steps = 110;
  s.min_lr_ratio = 0.1;
  CHECK(learning_rate(optim, s, 5) == Approx(0.5));
  CHECK(learning_rate(optim, s, 10) == Approx(1.0));
  CHECK(learning_rate(optim, s, 60) == Approx(0.55));  // cosine half-way: floor + half the span
  CHECK(learning_rate(optim, s, 110) == Approx(0.1));
  s.decay = Decay::Linear;
  CHECK(learning_rate(optim, s, 35) == Approx(0.1 + 0.9 * 0.75));
  s.decay = Decay::Constant;
  CHECK(learning_rate(optim, s, 100) == Approx(1.0));
}
