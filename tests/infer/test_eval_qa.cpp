// eval-qa end to end on the CPU: a tiny random model (configs/tiny-cpu-smoke.json, S = 4,
// L = 16) over synthetic passkey prompts long enough to compress several partitions.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lrsa/infer/eval_qa.h"
#include "lrsa/train/trainer.h"
#include "support/passkey_data.h"

using namespace lrsa;
using namespace lrsa::infer;
namespace fs = std::filesystem;

TEST_CASE("eval-qa scores every setting, reports the cache and writes per-sample lines", "[infer]") {
  const fs::path root = test::fresh_test_dir("eval-qa");
  const std::string qa_file = (root / "eval.jsonl").string();
  test::write_passkey_jsonl(qa_file, 5, 80, 0);
  const train::RunConfig config = train::load_config(
      std::string(LRSA_SOURCE_DIR) + "/configs/tiny-cpu-smoke.json",
      {"output_dir=" + (root / "run").string(), "data.train=" + qa_file, "data.eval=" + qa_file},
      train::ConfigContext{});

  EvalQaOptions options;
  options.settings = {"dense", "0.25"};
  options.max_new_tokens = 6;
  options.batch = 2;
  options.out = root / "qa.jsonl";
  const std::vector<SettingResult> results = run_eval_qa(config, options);
  REQUIRE(results.size() == 2);
  CHECK(results[0].name == "dense");
  CHECK(results[1].name == "lagkv r=0.25");
  for (const SettingResult& r : results) CHECK(r.scores.samples == 5);
  CHECK(results[0].cache.rows == results[0].cache.dense_rows);
  CHECK(results[1].cache.dense_rows == results[0].cache.dense_rows);
  CHECK(results[1].cache.kept_fraction() < 0.8);

  std::ifstream in(options.out);
  int64_t lines = 0, rows = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const nlohmann::json j = nlohmann::json::parse(line);
    for (const char* key : {"setting", "index", "prediction", "answers", "exact_match", "f1", "recall", "stopped",
                            "prompt_tokens", "cache_rows"})
      CHECK(j.contains(key));
    if (j["setting"] == "lagkv r=0.25") rows += j["cache_rows"].get<int64_t>();
  }
  CHECK(lines == 10);
  CHECK(rows == results[1].cache.rows);
  const std::string table = format_eval_qa_table(results);
  CHECK(table.find("lagkv r=0.25") != std::string::npos);

  // The chunked reference prefill generates the same answers.
  options.prefill = PrefillPath::Chunked;
  options.out.clear();
  const std::vector<SettingResult> chunked = run_eval_qa(config, options);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(chunked[i].scores.f1 == results[i].scores.f1);
    CHECK(chunked[i].generated_tokens == results[i].generated_tokens);
  }
  fs::remove_all(root);
}

// The README's main job in miniature: configs/quickstart.json fine-tunes the tiny LRSA model on
// passkey samples, and greedy answers through the KV cache (dense and LagKV 4x) must get most
// 5-digit keys right, where guessing gets 1 in 100000. About four minutes on 2 cores.
TEST_CASE("the quickstart recipe learns the passkey retrieval: eval accuracy far above chance", "[infer]") {
  const fs::path root = test::fresh_test_dir("quickstart");
  test::write_passkey_jsonl(root / "train.jsonl", 4000, 100, 1);
  test::write_passkey_jsonl(root / "eval.jsonl", 32, 100, 2);
  const train::RunConfig config = train::load_config(
      std::string(LRSA_SOURCE_DIR) + "/configs/quickstart.json",
      {"output_dir=" + (root / "run").string(), "data.train=" + (root / "train.jsonl").string(),
       "data.eval=" + (root / "eval.jsonl").string(), "device=cpu", "logging.progress=plain",
       "eval.every_steps=0"},
      train::ConfigContext{});
  train::run_training(config, train::TrainOptions{});

  EvalQaOptions options;
  options.settings = {"dense", "0.25"};
  options.max_new_tokens = 8;
  const std::vector<SettingResult> results = run_eval_qa(config, options);
  REQUIRE(results.size() == 2);
  for (const SettingResult& r : results) {
    INFO(r.name << ": exact match " << r.scores.exact_match << " over " << r.scores.samples << " samples");
    CHECK(r.scores.samples == 32);
    CHECK(r.scores.exact_match >= 0.75);
  }
}
