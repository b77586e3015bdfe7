#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "lrsa/train/config.h"

using namespace lrsa;
using namespace lrsa::train;
using nlohmann::json;

namespace {

// The smallest valid config: an inline model, the byte tokenizer, one file, a step bound.
json minimal() {
  return json::parse(R"({
    "output_dir": "runs/t",
    "model": {"architecture": "qwen2", "vocab_size": 300, "hidden_size": 128, "intermediate_size": 256,
              "num_hidden_layers": 2, "num_attention_heads": 2},
    "tokenizer": {"path": "builtin:bytes"},
    "data": {"train": "train.jsonl"},
    "schedule": {"max_steps": 10}
  })");
}

RunConfig load(const json& j, const std::vector<std::string>& sets = {}, ConfigContext ctx = {}) {
  return load_config_text(j.dump(), "run.json", sets, ctx);
}

// minimal() with one value replaced (or removed, for null), by JSON pointer ("/attention/ratio").
json with(const std::string& pointer, const json& value) {
  json j = minimal();
  if (value.is_null()) j.at(json::json_pointer(pointer).parent_pointer()).erase(json::json_pointer(pointer).back());
  else j[json::json_pointer(pointer)] = value;
  return j;
}

std::vector<std::filesystem::path> example_configs() {
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(LRSA_SOURCE_DIR) / "configs"))
    if (entry.path().extension() == ".json") paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

TEST_CASE("every example config loads, validates and round-trips", "[train]") {
  const std::vector<std::filesystem::path> paths = example_configs();
  std::vector<std::string> names;
  for (const auto& p : paths) names.push_back(p.filename().string());
  for (const char* expected : {"quickstart.json", "tiny-cpu-smoke.json", "qwen2.5-0.5b-lrsa-qa.json",
                               "qwen2.5-1.5b-lrsa-qa.json", "qwen2.5-7b-lrsa-qa.json"})
    CHECK(std::find(names.begin(), names.end(), expected) != names.end());

  for (const auto& path : paths) {
    INFO(path.string());
    for (const ConfigContext ctx : {ConfigContext{1, false}, ConfigContext{1, true}}) {
      const RunConfig c = load_config(path.string(), {}, ctx);
      const std::string dumped = dump_config(c);
      CHECK(dump_config(load_config_text(dumped, "dump", {}, ctx)) == dumped);
    }
  }
  // The GPU configs also fit 8 ranks; the quickstart runs on a CPU box with device auto.
  for (const char* name : {"qwen2.5-0.5b-lrsa-qa.json", "qwen2.5-1.5b-lrsa-qa.json", "qwen2.5-7b-lrsa-qa.json"}) {
    const RunConfig c = load_config(std::string(LRSA_SOURCE_DIR) + "/configs/" + name, {}, {8, true});
    CHECK(c.attention.lrsa.sink == 16);
    CHECK(c.attention.lrsa.lag == 1024);
    CHECK(c.attention.lrsa.ratio == 0.25);
    CHECK(c.data.max_seq_len >= 32768);
    CHECK(c.tokenizer.path == c.model.path);
    CHECK(c.batch.accumulation_steps(8) >= 1);
  }
  const RunConfig quick = load_config(std::string(LRSA_SOURCE_DIR) + "/configs/quickstart.json", {}, {1, false});
  CHECK(quick.model.arch.has_value());
  CHECK(quick.tokenizer.path == "builtin:bytes");
  CHECK(quick.data.train == std::vector<std::string>{"data/quickstart/train.jsonl"});
  CHECK(quick.data.eval == std::vector<std::string>{"data/quickstart/eval.jsonl"});
  CHECK(quick.attention.mode == attn::Mode::Lrsa);
  CHECK(quick.attention.lrsa.kept() >= 1);
}

TEST_CASE("defaults are filled and documented values hold", "[train]") {
  const RunConfig c = load(minimal(), {}, {2, false});
  REQUIRE(c.model.arch);
  const InlineArchitecture& a = *c.model.arch;
  CHECK(a.num_key_value_heads == 2);  // = num_attention_heads
  CHECK(a.head_dim == 64);            // = hidden_size / num_attention_heads
  CHECK(a.attention_bias == true);    // qwen2
  CHECK(a.rms_norm_eps == 1e-6);
  CHECK(a.rope_theta == 10000.0);
  CHECK_FALSE(a.tie_word_embeddings);
  CHECK(a.max_position_embeddings == 32768);
  CHECK(c.model.dtype == WeightDType::Auto);
  CHECK(c.tokenizer.chat_template == ChatTemplate::Auto);
  CHECK(c.data.eval.empty());
  CHECK(c.data.format == DataFormat::Chat);
  CHECK(c.data.max_seq_len == 2048);
  CHECK(c.data.truncate_side == TruncateSide::Left);
  CHECK_FALSE(c.data.skip_bad_lines);
  CHECK(c.data.shuffle);
  CHECK(c.attention.mode == attn::Mode::Lrsa);
  CHECK(c.attention.lrsa.sink == 16);
  CHECK(c.attention.lrsa.lag == 1024);
  CHECK(c.attention.lrsa.ratio == 0.25);
  CHECK(c.attention.lrsa.score_v_ratio == 1.0f);
  CHECK(c.attention.cudnn_gather_gib == attn::kDefaultCudnnGatherGib);
  CHECK(c.optim.lr == 1e-5);
  CHECK(c.optim.beta1 == 0.9);
  CHECK(c.optim.beta2 == 0.95);
  CHECK(c.optim.eps == 1e-8);
  CHECK(c.optim.weight_decay == 0.0);
  CHECK(c.optim.grad_clip == 1.0);
  CHECK(c.schedule.warmup_steps == 0);
  CHECK(c.schedule.decay == Decay::Cosine);
  CHECK(c.schedule.min_lr_ratio == 0.1);
  CHECK(c.schedule.epochs == 0);
  CHECK(c.batch.micro_batch_tokens == 2048);  // = data.max_seq_len
  CHECK(c.batch.tokens_per_step == 4096);     // = micro_batch_tokens * world size
  CHECK(c.batch.accumulation_steps(2) == 1);
  CHECK(c.precision.param_dtype == DType::F32);
  CHECK_FALSE(c.precision.deterministic);
  CHECK(c.memory.activation_checkpointing == Checkpointing::None);
  CHECK(c.memory.every == 2);
  CHECK(c.checkpoint.every_steps == 0);
  CHECK(c.checkpoint.keep_last == 2);
  CHECK(c.checkpoint.dir == "runs/t/checkpoints");
  CHECK(c.logging.every_steps == 10);
  CHECK(c.logging.progress == Progress::Auto);
  CHECK(c.logging.metrics_file == "runs/t/metrics.jsonl");
  CHECK(c.distributed.backend == Backend::Auto);
  CHECK_FALSE(c.distributed.zero1);
  CHECK(c.distributed.bucket_mb == 25);
  CHECK(c.seed == 1234);
  CHECK(c.device == DeviceChoice::Auto);
  CHECK(c.eval.every_steps == 0);
  CHECK(c.eval.max_samples == 0);

  // An HF directory brings its tokenizer; llama has no attention bias by default.
  json hf = minimal();
  hf["model"] = {{"path", "models/m"}};
  hf.erase("tokenizer");
  CHECK(load(hf).tokenizer.path == "models/m");
  CHECK_FALSE(*load(with("/model/architecture", "llama")).model.arch->attention_bias);
  // Integers may be written as floats with an integral value.
  CHECK(load(with("/schedule/max_steps", 1e3)).schedule.max_steps == 1000);
  // JSON with comments is accepted.
  CHECK(load_config_text("{\"output_dir\": \"o\", // where\n \"model\": {\"path\": \"m\"}, \"data\": {\"train\": \"t\"},"
                         " \"schedule\": {\"epochs\": 1}}",
                         "run.json", {}, {})
            .schedule.epochs == 1);
}

TEST_CASE("unknown keys are rejected with a did-you-mean suggestion", "[train]") {
  CHECK_THROWS_WITH(load(with("/optim/learing_rate", 1e-4)),
                    "config run.json: unknown key 'optim.learing_rate' (did you mean 'optim.lr'?)");
  CHECK_THROWS_WITH(load(with("/attention/lagg", 64)),
                    "config run.json: unknown key 'attention.lagg' (did you mean 'attention.lag'?)");
  CHECK_THROWS_WITH(load(with("/optimizer", json::object())),
                    "config run.json: unknown key 'optimizer' (did you mean 'optim'?)");
  // A key in the wrong section points to its real place.
  CHECK_THROWS_WITH(load(with("/optim/warmup_steps", 10)),
                    "config run.json: unknown key 'optim.warmup_steps' (did you mean 'schedule.warmup_steps'?)");
  CHECK_THROWS_WITH(load(with("/Seed", 1)), "config run.json: unknown key 'Seed' (did you mean 'seed'?)");
  CHECK_THROWS_WITH(load(with("/model/num_kv_heads", 2)),
                    "config run.json: unknown key 'model.num_kv_heads' (did you mean 'model.num_key_value_heads'?)");
  // Nothing close: the valid keys of the section are listed.
  CHECK_THROWS_WITH(load(with("/batch/zzzzzzzz", 1)),
                    "config run.json: unknown key 'batch.zzzzzzzz' (valid keys in 'batch': tokens_per_step, "
                    "micro_batch_tokens)");
  try {
    load(with("/eval/xyz123", 1));
    FAIL("no error");
  } catch (const ConfigError& e) {
    CHECK(e.path() == "eval.xyz123");
  }
}

TEST_CASE("type errors name the JSON path and the value", "[train]") {
  CHECK_THROWS_WITH(load(with("/attention/lag", "64")),
                    "config run.json: attention.lag: expected an integer, got \"64\"");
  CHECK_THROWS_WITH(load(with("/attention/lag", 64.5)), "config run.json: attention.lag: expected an integer, got 64.5");
  CHECK_THROWS_WITH(load(with("/seed", 18446744073709551615ull)), Catch::Contains("seed: expected an integer") &&
                                                                   Catch::Contains("(too large)"));
  CHECK_THROWS_WITH(load(with("/optim/lr", true)), "config run.json: optim.lr: expected a number, got true");
  CHECK_THROWS_WITH(load(with("/data/shuffle", 1)), "config run.json: data.shuffle: expected true or false, got 1");
  CHECK_THROWS_WITH(load(with("/output_dir", json::array())), "config run.json: output_dir: expected a string, got a list of 0");
  CHECK_THROWS_WITH(load(with("/optim", 3)), "config run.json: optim: expected an object (a section of keys), got 3");
  CHECK_THROWS_WITH(load(with("/data/train", json::array({"a.jsonl", 5}))),
                    "config run.json: data.train[1]: expected a string, got 5");
  CHECK_THROWS_WITH(load(with("/data/train", json::object())),
                    "config run.json: data.train: expected a file path or a list of file paths, got an object");
  CHECK_THROWS_WITH(load(with("/attention/mode", "lrs")),
                    "config run.json: attention.mode: must be one of dense, lrsa, got \"lrs\" (did you mean \"lrsa\"?)");
  CHECK_THROWS_WITH(load(with("/attention/mode", "sparse")),
                    "config run.json: attention.mode: must be one of dense, lrsa, got \"sparse\"");
  CHECK_THROWS_WITH(load(with("/precision/param_dtype", "f16")),
                    "config run.json: precision.param_dtype: must be one of bf16, f32, got \"f16\" (did you mean \"bf16\"?)");
  CHECK_THROWS_WITH(load(with("/device", 0)), "config run.json: device: expected one of auto, cpu, cuda, got 0");
  CHECK_THROWS_WITH(load(with("/attention/score_v_ratio", 1e300)),
                    Catch::Contains("attention.score_v_ratio: expected a number that fits a 32-bit float"));
  CHECK_THROWS_WITH(load_config_text("{\"a\": 1,}", "run.json", {}, {}),
                    Catch::StartsWith("config run.json: invalid JSON: parse error at line 1, column 9"));
  CHECK_THROWS_WITH(load_config_text("{\"seed\": 1e999}", "run.json", {}, {}),
                    "config run.json: invalid JSON: number overflow parsing '1e999'");
  CHECK_THROWS_WITH(load_config_text("[1]", "run.json", {}, {}),
                    "config run.json: expected a JSON object at the top level, got a list of 1");
  CHECK_THROWS_WITH(load_config("/nonexistent/run.json", {}, {}),
                    Catch::StartsWith("config /nonexistent/run.json: cannot open:"));
}

TEST_CASE("range errors name the JSON path, the range and the value", "[train]") {
  CHECK_THROWS_WITH(load(with("/attention/ratio", 1.5)), "config run.json: attention.ratio: must be in (0, 1], got 1.5");
  CHECK_THROWS_WITH(load(with("/attention/ratio", 0)), "config run.json: attention.ratio: must be in (0, 1], got 0");
  CHECK_THROWS_WITH(load(with("/attention/sink", -1)), Catch::StartsWith("config run.json: attention.sink: must be in [0, "));
  CHECK_THROWS_WITH(load(with("/attention/lag", 0)), Catch::StartsWith("config run.json: attention.lag: must be in [1, "));
  CHECK_THROWS_WITH(load(with("/attention/cudnn_gather_gib", 0)),
                    "config run.json: attention.cudnn_gather_gib: must be in (0, 16], got 0");
  CHECK_THROWS_WITH(load(with("/attention/cudnn_gather_gib", 32)),
                    "config run.json: attention.cudnn_gather_gib: must be in (0, 16], got 32");
  CHECK(load(with("/attention/cudnn_gather_gib", 2.5)).attention.cudnn_gather_gib == 2.5);
  CHECK_THROWS_WITH(load(with("/optim/lr", 0)), "config run.json: optim.lr: must be > 0, got 0");
  CHECK_THROWS_WITH(load(with("/optim/beta2", 1)), "config run.json: optim.beta2: must be in [0, 1), got 1");
  CHECK_THROWS_WITH(load(with("/optim/weight_decay", -0.1)), "config run.json: optim.weight_decay: must be >= 0, got -0.1");
  CHECK_THROWS_WITH(load(with("/schedule/min_lr_ratio", 2)), "config run.json: schedule.min_lr_ratio: must be in [0, 1], got 2");
  CHECK_THROWS_WITH(load(with("/data/max_seq_len", 1)), Catch::StartsWith("config run.json: data.max_seq_len: must be in [2, "));
  CHECK_THROWS_WITH(load(with("/model/num_hidden_layers", 0)), "config run.json: model.num_hidden_layers: must be >= 1, got 0");
  CHECK_THROWS_WITH(load(with("/logging/every_steps", 0)), "config run.json: logging.every_steps: must be >= 1, got 0");
  CHECK_THROWS_WITH(load(with("/output_dir", "")), "config run.json: output_dir: must not be empty");
  CHECK_THROWS_WITH(load(with("/output_dir", nullptr)), "config run.json: output_dir: required");
  CHECK_THROWS_WITH(load(with("/data/train", json::array())), "config run.json: data.train: must name at least one file");
  CHECK_THROWS_WITH(load(with("/data/eval", json::array({"e.jsonl", ""}))), "config run.json: data.eval[1]: must not be empty");
  CHECK_THROWS_WITH(load(with("/model/hidden_size", nullptr)),
                    "config run.json: model.hidden_size: required by an inline architecture");
}

TEST_CASE("cross-field rules", "[train]") {
  // Model: path XOR inline architecture, head arithmetic.
  CHECK_THROWS_WITH(load(with("/model/path", "models/m")),
                    "config run.json: model: set either 'path' (an HF model directory) or an inline architecture, not "
                    "both (found 'path' and 'architecture')");
  CHECK_THROWS_WITH(load(with("/model", json{{"dtype", "bf16"}})),
                    Catch::StartsWith("config run.json: model: set 'path' to an HF model directory, or describe the model inline"));
  CHECK_THROWS_WITH(load(with("/model/num_key_value_heads", 3)),
                    "config run.json: model.num_key_value_heads: must divide model.num_attention_heads = 2 (grouped-query "
                    "attention), got 3");
  CHECK_THROWS_WITH(load(with("/model/hidden_size", 65)),
                    "config run.json: model.hidden_size: must be a multiple of model.num_attention_heads = 2 when "
                    "model.head_dim is not set, got 65");
  json explicit_head_dim = with("/model/hidden_size", 65);
  explicit_head_dim["model"]["head_dim"] = 32;
  CHECK(load(explicit_head_dim).model.arch->head_dim == 32);
  CHECK_THROWS_WITH(load(with("/model/head_dim", 7)),
                    "config run.json: model.head_dim: must be even (rotary embeddings rotate pairs of channels), got 7");
  CHECK_THROWS_WITH(load(with("/model/attention_bias", false)),
                    "config run.json: model.attention_bias: qwen2 always has q/k/v biases; false needs architecture llama");
  CHECK_THROWS_WITH(load(with("/model/vocab_size", 100)),
                    "config run.json: model.vocab_size: must be >= 259 for the builtin:bytes tokenizer (256 bytes + 3 "
                    "special tokens), got 100");

  // Tokenizer.
  CHECK_THROWS_WITH(load(with("/tokenizer", nullptr)), Catch::StartsWith("config run.json: tokenizer.path: required when the model is given inline"));
  CHECK_THROWS_WITH(load(with("/tokenizer/path", "builtin:words")),
                    "config run.json: tokenizer.path: unknown built-in tokenizer 'builtin:words' (available: builtin:bytes)");

  // The CUDA kernels' head dimensions.
  json narrow = with("/model/hidden_size", 64);
  CHECK(load(narrow, {}, {1, false}).model.arch->head_dim == 32);
  narrow["device"] = "cuda";
  CHECK_THROWS_WITH(load(narrow), "config run.json: model.head_dim: must be 64 or 128 on CUDA (the attention kernels), "
                                  "got 32 (device cpu accepts any even head_dim)");

  // Attention: K >= 1 and the CUDA tile.
  json tiny_k = minimal();
  tiny_k["attention"] = {{"lag", 32}, {"ratio", 0.01}};
  CHECK_THROWS_WITH(load(tiny_k), Catch::StartsWith("config run.json: attention.ratio:") && Catch::Contains("K = 0") &&
                                      Catch::Contains("K must be >= 1"));
  tiny_k["attention"]["mode"] = "dense";  // LRSA parameters do not matter for dense attention
  CHECK_NOTHROW(load(tiny_k));
  json odd_lag = minimal();
  odd_lag["attention"] = {{"sink", 4}, {"lag", 100}};
  CHECK(load(odd_lag).attention.lrsa.lag == 100);  // CPU takes any lag
  odd_lag["device"] = "cuda";
  CHECK_THROWS_WITH(load(odd_lag), "config run.json: attention.lag: must be a multiple of 64 on CUDA (the LRSA kernel "
                                   "tile), got 100: use 64 or 128 (device cpu accepts any lag >= 1)");
  odd_lag["device"] = "auto";
  CHECK_NOTHROW(load(odd_lag, {}, {1, false}));
  CHECK_THROWS_WITH(load(odd_lag, {}, {1, true}), Catch::Contains("(the LRSA kernel tile); device auto picks CUDA here, got 100"));
  odd_lag["attention"]["lag"] = 32;
  CHECK_THROWS_WITH(load(odd_lag, {}, {1, true}), Catch::Contains("got 32: use 64 (device cpu"));
  odd_lag["attention"]["lag"] = 8256;  // a multiple of 64 past the CUDA selection's ceiling
  CHECK_THROWS_WITH(load(odd_lag, {}, {1, true}),
                    "config run.json: attention.lag: must be at most 8192 on CUDA (the selection sorts a partition in "
                    "one thread block); device auto picks CUDA here, got 8256 (device cpu accepts any lag >= 1)");
  odd_lag["device"] = "cpu";
  CHECK(load(odd_lag).attention.lrsa.lag == 8256);

  // Attention backend: a choice; cudnn needs a cuDNN build, a CUDA run and no determinism.
  CHECK(load(minimal()).attention.backend == attn::Backend::Auto);
  CHECK(load(with("/attention/backend", "native")).attention.backend == attn::Backend::Native);
  CHECK_THROWS_WITH(load(with("/attention/backend", "cudn")),
                    "config run.json: attention.backend: must be one of auto, native, cudnn, wgmma, got \"cudn\" (did "
                    "you mean \"cudnn\"?)");
  json cudnn = with("/attention/backend", "cudnn");
  cudnn["device"] = "cuda";
#ifdef LRSA_WITH_CUDNN
  CHECK(load(cudnn).attention.backend == attn::Backend::Cudnn);
  cudnn["precision"] = {{"deterministic", true}};
  CHECK_THROWS_WITH(load(cudnn), Catch::StartsWith("config run.json: attention.backend: cudnn is not deterministic"));
  cudnn["device"] = "cpu";
  cudnn["precision"]["deterministic"] = false;
  CHECK_THROWS_WITH(load(cudnn), Catch::StartsWith("config run.json: attention.backend: cudnn runs on CUDA only"));
#else
  CHECK_THROWS_WITH(load(cudnn), Catch::StartsWith("config run.json: attention.backend: cudnn needs a build with cuDNN"));
#endif
  // wgmma needs a CUDA run and no determinism.
  json wgmma = with("/attention/backend", "wgmma");
  wgmma["device"] = "cpu";
  CHECK_THROWS_WITH(load(wgmma), Catch::StartsWith("config run.json: attention.backend: wgmma runs on CUDA only"));
  wgmma["device"] = "cuda";
  wgmma["precision"] = {{"deterministic", true}};
  CHECK_THROWS_WITH(load(wgmma), Catch::StartsWith("config run.json: attention.backend: wgmma is not deterministic"));

  // Batch arithmetic.
  json batch = minimal();
  batch["data"]["max_seq_len"] = 1024;
  batch["batch"] = {{"micro_batch_tokens", 2048}, {"tokens_per_step", 10000}};
  CHECK_THROWS_WITH(load(batch, {}, {2, false}),
                    "config run.json: batch.tokens_per_step: must be a multiple of batch.micro_batch_tokens * world size "
                    "= 2048 * 2 = 4096, got 10000: use 8192 or 12288");
  batch["batch"]["tokens_per_step"] = 16384;
  CHECK(load(batch, {}, {2, false}).batch.accumulation_steps(2) == 4);
  CHECK(load(batch, {}, {4, false}).batch.accumulation_steps(4) == 2);
  CHECK_THROWS_WITH(load(batch, {}, {3, false}), Catch::Contains("= 2048 * 3 = 6144, got 16384: use 12288 or 18432"));
  batch["batch"]["micro_batch_tokens"] = 512;
  CHECK_THROWS_WITH(load(batch), "config run.json: batch.micro_batch_tokens: must be >= data.max_seq_len = 1024 (a forward "
                                 "holds whole sequences), got 512");

  // Schedule.
  CHECK_THROWS_WITH(load(with("/schedule", nullptr)),
                    "config run.json: schedule.max_steps: a run needs a bound: set schedule.max_steps or schedule.epochs "
                    "(both are 0)");
  CHECK_THROWS_WITH(load(with("/schedule/warmup_steps", 11)),
                    "config run.json: schedule.warmup_steps: must be <= schedule.max_steps = 10, got 11");

  // QA prompt template.
  json qa = with("/data/format", "qa");
  CHECK_NOTHROW(load(qa));
  qa["data"]["prompt_template"] = "Read {context} then answer.";
  CHECK_THROWS_WITH(load(qa), "config run.json: data.prompt_template: must contain {context} and {question} for "
                              "data.format qa, missing {question}");
  qa["data"]["prompt_template"] = "{context} {questoin}";
  CHECK_THROWS_WITH(load(qa), "config run.json: data.prompt_template: unknown placeholder {questoin} (available: "
                              "{context}, {question})");
  qa["data"]["prompt_template"] = "{\"doc\": {context}} { } Q: {question}";  // other braces are literal
  CHECK_NOTHROW(load(qa));

  // Eval and distribution.
  CHECK_THROWS_WITH(load(with("/eval", json{{"every_steps", 5}})),
                    "config run.json: eval.every_steps: is 5, but data.eval names no files");
  CHECK_THROWS_WITH(load(with("/distributed", json{{"backend", "none"}}), {}, {2, false}),
                    "config run.json: distributed.backend: none runs a single process, but the world size is 2");
  CHECK_THROWS_WITH(load(with("/distributed", json{{"backend", "nccl"}}), {}, {1, false}),
                    "config run.json: distributed.backend: nccl needs CUDA, but the device is auto (no GPU here)");
  CHECK_NOTHROW(load(with("/distributed", json{{"backend", "nccl"}}), {}, {1, true}));
}

TEST_CASE("--set overrides apply before validation", "[train]") {
  const RunConfig c = load(minimal(), {"optim.lr=3e-4", "memory.activation_checkpointing=every_n", "memory.every=3",
                                       "output_dir=runs/other", "data.train=[\"a.jsonl\", \"b.jsonl\"]",
                                       "attention.mode=\"dense\"", "schedule.max_steps=20", "schedule.max_steps=30"});
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.memory.activation_checkpointing == Checkpointing::EveryN);  // a new section
  CHECK(c.memory.every == 3);
  CHECK(c.output_dir == "runs/other");  // not JSON: taken as a string
  CHECK(c.checkpoint.dir == "runs/other/checkpoints");
  CHECK(c.data.train == std::vector<std::string>{"a.jsonl", "b.jsonl"});
  CHECK(c.attention.mode == attn::Mode::Dense);
  CHECK(c.schedule.max_steps == 30);  // the last one wins

  // null removes a key: switch the inline model for an HF directory.
  const RunConfig hf = load(minimal(), {"model=null", "model.path=models/m", "tokenizer.path=null"});
  CHECK(hf.model.path == "models/m");
  CHECK_FALSE(hf.model.arch);
  CHECK(hf.tokenizer.path == "models/m");

  CHECK_THROWS_WITH(load(minimal(), {"optim.learing_rate=1e-4"}),
                    "config run.json (--set optim.learing_rate=1e-4): unknown key 'optim.learing_rate' (did you mean "
                    "'optim.lr'?)");
  CHECK_THROWS_WITH(load(minimal(), {"optim={\"learing_rate\": 1}"}),
                    Catch::StartsWith("config run.json (--set optim={\"learing_rate\": 1}): unknown key 'optim.learing_rate'"));
  CHECK_THROWS_WITH(load(minimal(), {"attention.lag=abc"}),
                    "config run.json (--set attention.lag=abc): attention.lag: expected an integer, got \"abc\"");
  CHECK_THROWS_WITH(load(minimal(), {"attention.ratio=1.5"}),
                    "config run.json (--set attention.ratio=1.5): attention.ratio: must be in (0, 1], got 1.5");
  CHECK_THROWS_WITH(load(minimal(), {"attention.ratio=1.5", "attention.ratio=0.5", "optim.lr=-1"}),
                    "config run.json (--set optim.lr=-1): optim.lr: must be > 0, got -1");
  CHECK_THROWS_WITH(load(minimal(), {"seed"}), "config run.json: --set seed: expected section.key=value");
  CHECK_THROWS_WITH(load(minimal(), {"=3"}), "config run.json: --set =3: expected section.key=value");
  CHECK_THROWS_WITH(load(minimal(), {"optim..lr=3"}), "config run.json: --set optim..lr=3: empty name in key 'optim..lr'");
  CHECK_THROWS_WITH(load(minimal(), {"output_dir.x=1"}),
                    "config run.json: --set output_dir.x=1: 'output_dir' is not a section (it holds \"runs/t\")");
  CHECK_THROWS_WITH(load(minimal(), {std::string("output_dir=\xff")}),
                    "config run.json: --set output_dir: the value is not valid UTF-8");
  // An error the override did not cause is not blamed on it.
  CHECK_THROWS_WITH(load(with("/optim/lr", 0), {"seed=3"}), "config run.json: optim.lr: must be > 0, got 0");
}

TEST_CASE("dump and load give back the same config", "[train]") {
  json j = minimal();
  j["attention"] = {{"score_v_ratio", 0.1}, {"ratio", 0.3}, {"lag", 64}, {"sink", 0}};
  j["data"]["eval"] = {"e1.jsonl", "e2.jsonl"};
  j["optim"] = {{"lr", 1.2345678901234567e-4}};
  const RunConfig c = load(j, {}, {4, false});
  const std::string dumped = dump_config(c);
  // Every field is written, floats in their shortest form.
  CHECK(dumped.find("\"score_v_ratio\": 0.1,\n") != std::string::npos);
  CHECK(dumped.find("\"cudnn_gather_gib\": 4.0\n") != std::string::npos);
  CHECK(dumped.find("\"tokens_per_step\": 8192") != std::string::npos);
  CHECK(dumped.find("\"metrics_file\": \"runs/t/metrics.jsonl\"") != std::string::npos);
  const RunConfig back = load_config_text(dumped, "checkpoint", {}, {4, false});
  CHECK(dump_config(back) == dumped);
  CHECK(back.attention.lrsa.score_v_ratio == c.attention.lrsa.score_v_ratio);
  CHECK(back.optim.lr == c.optim.lr);
  CHECK(back.data.eval == c.data.eval);
  CHECK(back.model.arch->head_dim == 64);
  // The resolved tokens_per_step is kept explicit, so another world size must still divide it.
  CHECK_THROWS_WITH(load_config_text(dumped, "checkpoint", {}, {3, false}),
                    Catch::StartsWith("config checkpoint: batch.tokens_per_step: must be a multiple of"));
  // A config built in code goes through the same rules.
  RunConfig built = c;
  CHECK_NOTHROW(finalize_config(built, {4, false}));
  CHECK(dump_config(built) == dumped);
  built.attention.lrsa.ratio = 2.0;
  CHECK_THROWS_WITH(finalize_config(built, {4, false}), "attention.ratio: must be in (0, 1], got 2");
}

TEST_CASE("inputs named by the config must exist", "[train]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "lrsa_test_config_inputs";
  fs::remove_all(dir);
  fs::create_directories(dir / "model");
  std::ofstream(dir / "train.jsonl") << "{}\n";
  std::ofstream(dir / "model" / "tokenizer.json") << "{}\n";

  json j = minimal();
  j["data"]["train"] = (dir / "train.jsonl").string();
  RunConfig c = load(j);
  CHECK_NOTHROW(check_inputs_exist(c));
  c.data.eval = {(dir / "missing.jsonl").string()};
  CHECK_THROWS_WITH(check_inputs_exist(c), "data.eval[0]: file '" + (dir / "missing.jsonl").string() + "' not found");
  c.data.eval.clear();
  c.model.path = "no/such/model";
  CHECK_THROWS_WITH(check_inputs_exist(c), Catch::StartsWith("model.path: directory 'no/such/model' not found (relative "
                                                             "paths resolve against the current directory '"));
  c.model.path = (dir / "model").string();
  c.tokenizer.path = (dir / "model" / "tokenizer.json").string();
  CHECK_NOTHROW(check_inputs_exist(c));
  fs::remove_all(dir);
}

TEST_CASE("docs/config.md has a row for every key the dump writes", "[train]") {
  // Rows "| `key` | ..." under "### Top level" or "### `section` ...": the keys each section documents.
  std::ifstream doc(std::filesystem::path(LRSA_SOURCE_DIR) / "docs" / "config.md");
  REQUIRE(doc);
  std::map<std::string, std::set<std::string>> documented;
  std::string line, section;
  bool in_keys = false;
  while (std::getline(doc, line)) {
    if (line.rfind("## ", 0) == 0) in_keys = line == "## Keys";
    if (!in_keys) continue;
    if (line == "### Top level") section = "";
    else if (line.rfind("### `", 0) == 0) section = line.substr(5, line.find('`', 5) - 5);
    else if (line.rfind("| `", 0) == 0) documented[section].insert(line.substr(3, line.find('`', 3) - 3));
  }
  const json dumped = config_to_json(load(minimal()));
  int keys = 0;
  for (const auto& [name, value] : dumped.items()) {
    if (!value.is_object()) {
      CHECK(documented[""].count(name) == 1);
      ++keys;
      continue;
    }
    for (const auto& field : value.items()) {
      INFO(name << "." << field.key());
      CHECK(documented[name].count(field.key()) == 1);
      ++keys;
    }
  }
  CHECK(keys > 50);  // the dump is the whole schema, not a part of it
}
