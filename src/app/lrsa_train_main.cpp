// lrsa-train: the command users run. Subcommands: train, eval, eval-qa, generate, export, make-data, tokenize.
// Exit codes: 0 success, 1 runtime error, 2 usage or configuration error, 130 interrupted.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "lrsa/data/synthetic.h"
#include "lrsa/data/tokenizer.h"
#include "lrsa/dist/comm.h"
#include "lrsa/infer/eval_qa.h"
#include "lrsa/model/hf_export.h"
#include "lrsa/train/config.h"
#include "lrsa/train/trainer.h"

namespace {

using namespace lrsa;

constexpr int kExitRuntime = 1, kExitUsage = 2, kExitInterrupted = 130;

struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;
  void add_to(CLI::App* app) {
    app->add_option("--config", path, "run configuration (JSON; docs/config.md)")->required()->check(CLI::ExistingFile);
    app->add_option("--set", overrides, "override a field: section.key=value (repeatable; value parsed as JSON)");
  }
  train::RunConfig load() const {
    train::ConfigContext ctx;
    ctx.cuda_available = cuda_available();
    train::RunConfig config = train::load_config(path, overrides, ctx);
    train::check_inputs_exist(config);
    return config;
  }
};

int tokenize_command(const std::string& tokenizer_path, const std::string& text, const std::string& file, bool special,
                     bool decode) {
  const data::Tokenizer tokenizer = data::Tokenizer::load(tokenizer_path);
  std::string input = text;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    LRSA_CHECK(in.good(), "tokenize: cannot read {}", file);
    std::stringstream ss;
    ss << in.rdbuf();
    input = ss.str();
  }
  if (decode) {
    std::vector<int32_t> ids;
    try {
      for (const auto& v : nlohmann::json::parse(input)) ids.push_back(v.get<int32_t>());
    } catch (const nlohmann::json::exception& e) {
      fail("tokenize --decode: input is not a JSON array of ids: {}", e.what());
    }
    std::cout << tokenizer.decode(ids) << "\n";
  } else {
    std::cout << nlohmann::json(tokenizer.encode(input, special)).dump() << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lrsa-train: long-context fine-tuning with Lag-Relative Sparse Attention"};
  app.require_subcommand(1);

  ConfigArgs train_args;
  std::string resume;
  CLI::App* train_cmd = app.add_subcommand("train", "fine-tune a model as the config says");
  train_args.add_to(train_cmd);
  train_cmd->add_option("--resume", resume, "'auto' (newest valid checkpoint, if any) or a checkpoint directory");

  ConfigArgs eval_args;
  std::string eval_weights, per_token_out;
  CLI::App* eval_cmd = app.add_subcommand("eval", "mean loss and perplexity on data.eval");
  eval_args.add_to(eval_cmd);
  eval_cmd->add_option("--weights", eval_weights, "checkpoint or HF directory to evaluate (default: the config's model)");
  eval_cmd->add_option("--per-token-out", per_token_out, "write {\"index\", \"nll\": [...]} per sample (JSONL)");

  ConfigArgs qa_args;
  infer::EvalQaOptions qa;
  std::string qa_weights, qa_out, qa_ratios = "dense,0.5,0.25,0.125", qa_prefill = "whole";
  CLI::App* qa_cmd = app.add_subcommand("eval-qa", "QA accuracy with greedy generation through the (LagKV) KV cache");
  qa_args.add_to(qa_cmd);
  qa_cmd->add_option("--weights", qa_weights, "checkpoint or HF directory (default: newest valid checkpoint, else the config's model)");
  qa_cmd->add_option("--data", qa.data, "QA JSONL file (default: data.eval)");
  qa_cmd->add_option("--ratios", qa_ratios, "comma-separated cache settings: 'dense' or a kept ratio in (0, 1]");
  qa_cmd->add_option("--max-new-tokens", qa.max_new_tokens, "generated tokens per answer at most")->check(CLI::PositiveNumber);
  qa_cmd->add_option("--max-samples", qa.max_samples, "evaluate the first N samples (default: eval.max_samples)");
  qa_cmd->add_option("--batch", qa.batch, "prompts generated together")->check(CLI::PositiveNumber);
  qa_cmd->add_option("--prefill", qa_prefill, "whole (one forward pass) or chunked (the spec's chunk-by-chunk reference)")
      ->check(CLI::IsMember({"whole", "chunked"}));
  qa_cmd->add_option("--out", qa_out, "per-sample results (JSONL)");

  ConfigArgs gen_args;
  infer::GenerateCommandOptions gen;
  std::string gen_weights;
  CLI::App* gen_cmd = app.add_subcommand("generate", "greedy answers to prompts through the (LagKV) KV cache");
  gen_args.add_to(gen_cmd);
  gen_cmd->add_option("--weights", gen_weights, "checkpoint or HF directory (default: newest valid checkpoint, else the config's model)");
  gen_cmd->add_option("--prompt", gen.prompts, "a user message (repeatable: generated as one batch)")->required();
  gen_cmd->add_option("--cache", gen.setting, "'dense' or a LagKV kept ratio in (0, 1] (sink and lag from the config)");
  gen_cmd->add_option("--max-new-tokens", gen.max_new_tokens, "generated tokens at most")->check(CLI::PositiveNumber);

  std::string export_from, export_to, export_tokenizer;
  CLI::App* export_cmd = app.add_subcommand("export", "write a checkpoint's model as a Hugging Face directory");
  export_cmd->add_option("--checkpoint", export_from, "checkpoint directory (output_dir/checkpoints/step-N)")->required();
  export_cmd->add_option("--out", export_to, "destination directory")->required();
  export_cmd->add_option("--tokenizer", export_tokenizer, "directory whose tokenizer files are copied along");

  lrsa::data::SyntheticQaOptions synth;
  CLI::App* data_cmd = app.add_subcommand("make-data", "write synthetic long-context QA data (JSONL)");
  data_cmd->add_option("--kind", synth.kind, "passkey (a 5-digit key hidden in filler) or kv (key/value retrieval)")
      ->check(CLI::IsMember({"passkey", "kv"}));
  data_cmd->add_option("--out", synth.output_path, "output JSONL file")->required();
  data_cmd->add_option("--samples", synth.num_samples, "number of samples")->check(CLI::PositiveNumber);
  data_cmd->add_option("--context-tokens", synth.context_tokens, "context length in tokens of --tokenizer")
      ->check(CLI::PositiveNumber);
  data_cmd->add_option("--tokenizer", synth.tokenizer, "'bytes' or a tokenizer.json that measures lengths");
  data_cmd->add_option("--seed", synth.seed, "seed (samples are a function of seed and index)");
  data_cmd->add_option("--pairs", synth.num_pairs, "key/value pairs per sample (kv)")->check(CLI::PositiveNumber);

  std::string tok_path, tok_text, tok_file;
  bool tok_special = false, tok_decode = false;
  CLI::App* tok_cmd = app.add_subcommand("tokenize", "print token ids as a JSON array (or decode one)");
  tok_cmd->add_option("--tokenizer", tok_path, "tokenizer.json path or 'bytes'")->required();
  auto* text_opt = tok_cmd->add_option("--text", tok_text, "text to encode (or, with --decode, a JSON id array)");
  auto* file_opt = tok_cmd->add_option("--file", tok_file, "read the input from a file");
  text_opt->excludes(file_opt);
  tok_cmd->add_flag("--special", tok_special, "parse special-token text as special tokens (HF's default)");
  tok_cmd->add_flag("--decode", tok_decode, "decode a JSON array of ids to text");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  try {
    if (*train_cmd) {
      const train::RunConfig config = train_args.load();
      train::TrainOptions options;
      options.resume = resume;
      const train::TrainResult result = train::run_training(config, options);
      if (result.interrupted) return kExitInterrupted;
      spdlog::info("done: {} steps, last checkpoint {}", result.last_step, result.last_checkpoint.string());
      // Rank 0 alone evaluates (and writes eval.json); the others go straight to exit and
      // MPI_Finalize (no barrier: evaluation may outlast the collectives' timeout).
      if (!config.data.eval.empty() && dist::Comm::world().is_root()) {
        const train::EvalResult eval = train::run_eval(config, result.last_checkpoint, "");
        spdlog::info("eval: loss {:.4f} perplexity {:.3f} over {} tokens ({} samples)", eval.mean_loss, eval.perplexity,
                     eval.tokens, eval.samples);
      }
    } else if (*eval_cmd) {
      const train::RunConfig config = eval_args.load();
      const train::EvalResult eval = train::run_eval(config, eval_weights, per_token_out);
      spdlog::info("eval: loss {:.4f} perplexity {:.3f} over {} tokens ({} samples)", eval.mean_loss, eval.perplexity,
                   eval.tokens, eval.samples);
    } else if (*qa_cmd) {
      const train::RunConfig config = qa_args.load();
      qa.weights = qa_weights;
      qa.out = qa_out;
      qa.prefill = qa_prefill == "chunked" ? infer::PrefillPath::Chunked : infer::PrefillPath::Whole;
      qa.settings.clear();
      std::stringstream list(qa_ratios);
      for (std::string item; std::getline(list, item, ',');) qa.settings.push_back(item);
      std::cout << infer::format_eval_qa_table(infer::run_eval_qa(config, qa)) << std::flush;
    } else if (*gen_cmd) {
      const train::RunConfig config = gen_args.load();
      gen.weights = gen_weights;
      for (const infer::GeneratedText& t : infer::run_generate(config, gen))
        std::cout << nlohmann::json{{"text", t.text}, {"stopped", t.stopped}, {"cache_rows", t.cache.rows},
                                    {"dense_rows", t.cache.dense_rows}}
                         .dump()
                  << "\n";
    } else if (*export_cmd) {
      const model::ModelConfig config = model::load_model_config(export_from);
      model::HfExportOptions options;
      options.tokenizer_dir = export_tokenizer;
      model::export_hf_checkpoint(export_to, config, model::load_safetensors_checkpoint(export_from), options);
      spdlog::info("exported {} to {}", export_from, export_to);
    } else if (*data_cmd) {
      const std::filesystem::path parent = std::filesystem::path(synth.output_path).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent);
      data::write_synthetic_qa(synth);
      spdlog::info("wrote {} {} samples of ~{} tokens to {}", synth.num_samples, synth.kind, synth.context_tokens,
                   synth.output_path);
    } else if (*tok_cmd) {
      LRSA_CHECK(!tok_text.empty() || !tok_file.empty(), "tokenize: give --text or --file");
      return tokenize_command(tok_path, tok_text, tok_file, tok_special, tok_decode);
    }
  } catch (const train::ConfigError& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitRuntime;
  }
  return 0;
}
