// End-to-end training: a tiny model learns a synthetic QA task, an interrupted run resumes bit for
// bit (CPU; CUDA in deterministic mode), and resume skips corrupt checkpoints.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "lrsa/ops/matmul.h"
#include "lrsa/train/checkpoint.h"
#include "lrsa/train/trainer.h"
#include "support/passkey_data.h"

using namespace lrsa;
using namespace lrsa::train;
namespace fs = std::filesystem;

namespace {

fs::path test_root() {
  static const fs::path root = [] {
    const fs::path r = test::fresh_test_dir("trainer");
    test::write_passkey_jsonl(r / "train.jsonl", 256, 60, 1);
    test::write_passkey_jsonl(r / "eval.jsonl", 32, 60, 2);
    return r;
  }();
  return root;
}

RunConfig tiny_run(const std::string& name, int64_t max_steps, const std::vector<std::string>& extra = {}) {
  const fs::path root = test_root();
  std::vector<std::string> overrides = {
      "output_dir=" + (root / name).string(), "data.train=" + (root / "train.jsonl").string(),
      "data.eval=" + (root / "eval.jsonl").string(), fmt::format("schedule.max_steps={}", max_steps),
      "schedule.warmup_steps=2", "checkpoint.every_steps=2", "checkpoint.keep_last=0", "logging.progress=plain"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config(std::string(LRSA_SOURCE_DIR) + "/configs/tiny-cpu-smoke.json", overrides, ConfigContext{});
}

std::vector<double> losses(const TrainResult& r) {
  std::vector<double> out;
  for (const StepRecord& s : r.steps) out.push_back(s.loss);
  return out;
}

}  // namespace

TEST_CASE("a tiny model learns the synthetic passkey task", "[train]") {
  const RunConfig config = tiny_run("learn", 60, {"optim.lr=0.003", "schedule.warmup_steps=5"});
  const TrainResult result = run_training(config, TrainOptions{});
  REQUIRE(result.steps.size() == 60);
  double first = 0, last = 0;
  for (size_t i = 0; i < 5; ++i) first += result.steps[i].loss / 5;
  for (size_t i = 55; i < 60; ++i) last += result.steps[i].loss / 5;
  INFO("mean loss of the first 5 steps " << first << ", of the last 5 " << last);
  CHECK(last < 0.6 * first);
  // Evaluation on held-out samples: below the loss of guessing uniformly among the 320 ids.
  const EvalResult eval = run_eval(config, result.last_checkpoint, "");
  CHECK(eval.tokens > 0);
  CHECK(eval.mean_loss < std::log(320.0) * 0.6);
  CHECK(fs::exists(fs::path(config.output_dir) / "eval.json"));
  std::ifstream metrics(fs::path(config.output_dir) / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) ++lines;
  CHECK(lines == 60);
}

namespace {

// Runs 6 steps straight, and 3 + 3 with a stop and `--resume auto` in between: the per-step
// losses must be identical, bit for bit.
void check_resume_is_exact(const std::string& name, const std::vector<std::string>& extra) {
  const TrainResult straight = run_training(tiny_run(name + "-straight", 6, extra), TrainOptions{});
  REQUIRE(straight.steps.size() == 6);

  TrainOptions first_half;
  first_half.stop_after_step = 3;
  const TrainResult part1 = run_training(tiny_run(name + "-resumed", 6, extra), first_half);
  CHECK(part1.interrupted);
  CHECK(checkpoint_step(part1.last_checkpoint) == 3);
  TrainOptions resume;
  resume.resume = "auto";
  const TrainResult part2 = run_training(tiny_run(name + "-resumed", 6, extra), resume);
  std::vector<double> joined = losses(part1);
  for (double l : losses(part2)) joined.push_back(l);
  CHECK(joined == losses(straight));  // exact equality, not approximate
}

}  // namespace

TEST_CASE("an interrupted run resumes bit for bit", "[train]") { check_resume_is_exact("cpu", {}); }

// The CUDA attention kernels need head_dim 64 or 128 and lag % 64 == 0; deterministic mode
// replaces the atomic dQ accumulation by a fixed-order pass.
TEST_CASE("on CUDA in deterministic mode an interrupted run resumes bit for bit", "[train][cuda]") {
  check_resume_is_exact("cuda", {"device=cuda", "precision.deterministic=true", "precision.param_dtype=bf16",
                                 "model.hidden_size=128", "model.intermediate_size=256", "attention.lag=64"});
  if (std::getenv("LRSA_GEMM_CANDIDATES") == nullptr) CHECK(ops::gemm_candidates() == 1);
}

TEST_CASE("training times 8 GEMM algorithms per shape unless deterministic", "[train]") {
  CHECK(resolve_model(tiny_run("gemm", 2)).gemm_candidates == 8);
  CHECK(resolve_model(tiny_run("gemm", 2, {"precision.deterministic=true"})).gemm_candidates == 1);
}

TEST_CASE("on CUDA a training run sets its GEMM algorithm search", "[train][cuda]") {
  const std::vector<std::string> cuda = {"device=cuda", "precision.param_dtype=bf16", "model.hidden_size=128",
                                         "model.intermediate_size=256", "attention.lag=64"};
  REQUIRE(run_training(tiny_run("gemm-cuda", 2, cuda), TrainOptions{}).steps.size() == 2);
  if (std::getenv("LRSA_GEMM_CANDIDATES") == nullptr) CHECK(ops::gemm_candidates() == 8);
  ops::set_gemm_candidates(1);
}

TEST_CASE("resume auto skips a corrupt newest checkpoint", "[train]") {
  const RunConfig config = tiny_run("corrupt", 4);
  run_training(config, TrainOptions{});
  const fs::path root = config.checkpoint.dir;
  REQUIRE(list_checkpoints(root).size() == 2);  // steps 2 and 4
  {
    std::fstream f(root / "step-00000004" / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-8, std::ios::end);
    f.put('\x7f');
  }
  CHECK_THROWS_WITH(
      [&] {
        TrainOptions explicit_dir;
        explicit_dir.resume = (root / "step-00000004").string();
        run_training(tiny_run("corrupt", 5), explicit_dir);
      }(),
      Catch::Contains("step-00000004") && Catch::Contains("corrupt"));
  TrainOptions resume;
  resume.resume = "auto";
  const TrainResult r = run_training(tiny_run("corrupt", 5), resume);
  REQUIRE(r.steps.size() == 3);  // resumed from step 2
  CHECK(r.steps.front().step == 3);
}
