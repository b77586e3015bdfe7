#include "lrsa/train/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>

#include "lrsa/model/hf_export.h"
#include "lrsa/ops/optimizer.h"
#include "lrsa/train/checkpoint.h"
#include "lrsa/train/data_source.h"
#include "lrsa/train/optimizer.h"
#include "lrsa/train/progress.h"

#ifdef LRSA_WITH_CUDA
#include "lrsa/core/cuda_backend.h"
#endif

namespace lrsa::train {

namespace fs = std::filesystem;

namespace {

// Consecutive non-finite steps after which training stops (a diverged run does not recover).
constexpr int64_t kMaxConsecutiveSkips = 5;

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

model::ModelConfig inline_model_config(const InlineArchitecture& a) {
  model::ModelConfig c;
  c.architecture = a.architecture == Architecture::Qwen2 ? model::Architecture::Qwen2 : model::Architecture::Llama;
  c.vocab_size = a.vocab_size;
  c.hidden_size = a.hidden_size;
  c.intermediate_size = a.intermediate_size;
  c.num_hidden_layers = a.num_hidden_layers;
  c.num_attention_heads = a.num_attention_heads;
  c.num_key_value_heads = a.num_key_value_heads;
  c.head_dim = a.head_dim;
  c.rms_norm_eps = a.rms_norm_eps;
  c.rope_theta = a.rope_theta;
  c.tie_word_embeddings = a.tie_word_embeddings;
  c.attention_bias = a.attention_bias.value_or(c.architecture == model::Architecture::Qwen2);
  c.max_position_embeddings = a.max_position_embeddings;
  model::validate_model_config(c, "run config: model.arch");
  return c;
}

// Visible (query, key) pairs of one micro-batch: attention FLOPs for MFU.
double attention_pairs(const attn::SeqLayout& layout, const attn::AttentionConfig& a) {
  double pairs = 0;
  for (size_t d = 0; d + 1 < layout.cu_seqlens.size(); ++d) {
    const int64_t n = layout.cu_seqlens[d + 1] - layout.cu_seqlens[d];
    if (a.mode == attn::Mode::Dense) {
      pairs += 0.5 * double(n) * double(n + 1);
      continue;
    }
    const int64_t S = a.lrsa.sink, L = a.lrsa.lag, K = a.lrsa.kept();
    for (int64_t t = 0; t < n; ++t) {
      if (t < S + 2 * L) {
        pairs += double(t + 1);
      } else {
        const int64_t q = (t - S) / L;
        pairs += double(S + K * (q - 1) + L + (t - S - q * L + 1));
      }
    }
  }
  return pairs;
}

struct StepClock {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
};

void write_optimizer_state(const fs::path& path, Optimizer& optimizer) {
  model::write_safetensors(path, {{"master", optimizer.master()}, {"m", optimizer.m()}, {"v", optimizer.v()}},
                           {{"steps_taken", std::to_string(optimizer.steps_taken())},
                            {"shard_begin", std::to_string(optimizer.shard_begin())},
                            {"shard_end", std::to_string(optimizer.shard_end())}});
}

void read_optimizer_state(const fs::path& path, Optimizer& optimizer) {
  const model::SafetensorsContents state = model::read_safetensors(path);
  LRSA_CHECK(state.metadata.count("shard_begin") && std::stoll(state.metadata.at("shard_begin")) == optimizer.shard_begin() &&
                 std::stoll(state.metadata.at("shard_end")) == optimizer.shard_end(),
             "{}: optimizer shard does not match this run's parameter layout", path.string());
  for (const char* name : {"master", "m", "v"}) {
    LRSA_CHECK(state.tensors.count(name), "{}: missing tensor '{}'", path.string(), name);
  }
  optimizer.master().copy_(state.tensors.at("master"));
  optimizer.m().copy_(state.tensors.at("m"));
  optimizer.v().copy_(state.tensors.at("v"));
  optimizer.set_steps_taken(std::stoll(state.metadata.at("steps_taken")));
}

// Keeps only the metrics lines of steps up to `last_step` (a resumed run rewrites the rest).
void truncate_metrics(const fs::path& path, int64_t last_step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t(0)) <= last_step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      break;  // a line cut by a crash ends the file
    }
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

// Stops before allocating when the plan cannot fit, saying what to change.
void check_memory_fits(const model::MemoryPlan& plan, Device device, const RunConfig& config) {
  int64_t available = 0;
  if (device.is_cuda()) {
#ifdef LRSA_WITH_CUDA
    size_t free_bytes = 0, total_bytes = 0;
    LRSA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    available = int64_t(free_bytes);
#endif
  } else {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib >> unit)
      if (key == "MemAvailable:") available = kib * 1024;
  }
  if (available <= 0 || plan.total() <= available) return;
  fail("predicted peak memory {:.2f} GiB exceeds the {:.2f} GiB available on {}: lower batch.micro_batch_tokens "
       "(now {}), enable memory.activation_checkpointing (now {}), use attention.mode lrsa, or shard the optimizer "
       "with distributed.zero1",
       plan.total() / 1073741824.0, available / 1073741824.0, device.str(), config.batch.micro_batch_tokens,
       config.memory.activation_checkpointing == Checkpointing::None ? "none" : "on");
}

}  // namespace

ModelSetup resolve_model(const RunConfig& config) {
  ModelSetup s;
  s.config = config.model.arch ? inline_model_config(*config.model.arch) : model::load_model_config(config.model.path);
  const bool cuda = config.device == DeviceChoice::Cuda || (config.device == DeviceChoice::Auto && cuda_available());
  LRSA_CHECK(!(config.device == DeviceChoice::Cuda && !cuda_available()), "device is 'cuda' but {}", cuda_unavailable_reason());
  s.device = cuda ? Device::cuda(0) : Device::cpu();
  s.param_dtype = config.precision.param_dtype;
  s.options.attention.mode = config.attention.mode;
  s.options.attention.lrsa = config.attention.lrsa;
  s.options.attention.deterministic = config.precision.deterministic;
  switch (config.memory.activation_checkpointing) {
    case Checkpointing::None: s.options.checkpoint_every = 0; break;
    case Checkpointing::All: s.options.checkpoint_every = 1; break;
    case Checkpointing::EveryN: s.options.checkpoint_every = config.memory.every; break;
  }
  return s;
}

void init_or_load_weights(model::Decoder& decoder, const RunConfig& config) {
  if (config.model.arch) {
    model::init_params(decoder.params(), decoder.config(), uint64_t(config.seed));
  } else {
    model::load_hf_weights(decoder.params(), decoder.config(), model::load_safetensors_checkpoint(config.model.path),
                           config.model.path);
  }
}

TrainResult run_training(const RunConfig& config, const TrainOptions& options, std::unique_ptr<BatchSource> source) {
  const ModelSetup setup = resolve_model(config);
  const int64_t accumulation = config.batch.accumulation_steps(1);
  const model::MemoryPlan plan = model::plan_memory(setup.config, setup.options, setup.param_dtype,
                                                    config.batch.micro_batch_tokens, 1);
  spdlog::info("model: {} layers, hidden {}, {} heads ({} kv) x {}, vocab {}, {:.1f}M parameters, on {} in {}",
               setup.config.num_hidden_layers, setup.config.hidden_size, setup.config.num_attention_heads,
               setup.config.num_key_value_heads, setup.config.head_dim, setup.config.vocab_size,
               double(model::parameter_count(setup.config)) / 1e6, setup.device.str(), dtype_name(setup.param_dtype));
  spdlog::info("memory plan per device: parameters {:.2f} GiB, gradients {:.2f} GiB, optimizer {:.2f} GiB, "
               "activations {:.2f} GiB, workspace {:.2f} GiB, predicted peak {:.2f} GiB",
               plan.parameters / 1073741824.0, plan.gradients / 1073741824.0, plan.optimizer / 1073741824.0,
               plan.activations / 1073741824.0, plan.workspace / 1073741824.0, plan.total() / 1073741824.0);
  check_memory_fits(plan, setup.device, config);

  model::Decoder decoder(setup.config, setup.options, setup.param_dtype, setup.device);
  init_or_load_weights(decoder, config);
  Optimizer optimizer(decoder, config.optim);
  if (!source) source = make_train_source(config, 0, 1);

  const fs::path output_dir = config.output_dir;
  const fs::path checkpoint_root = config.checkpoint.dir;
  const fs::path metrics_path = config.logging.metrics_file;
  fs::create_directories(output_dir);

  int64_t step = 0, tokens_seen = 0, consecutive_skips = 0, skipped_total = 0;
  TrainResult result;
  // Resume: weights, optimizer state, data cursor and counters from a checkpoint.
  std::optional<fs::path> resume_dir;
  if (options.resume == "auto") {
    resume_dir = latest_valid_checkpoint(checkpoint_root, [](const std::string& w) { spdlog::warn("{}", w); });
    if (!resume_dir) spdlog::info("resume auto: no valid checkpoint under {}, starting fresh", checkpoint_root.string());
  } else if (!options.resume.empty()) {
    const std::string problem = verify_checkpoint(options.resume);
    LRSA_CHECK(problem.empty(), "--resume {}: {}", options.resume, problem);
    resume_dir = fs::path(options.resume);
  }
  if (resume_dir) {
    model::load_hf_weights(decoder.params(), setup.config, model::load_safetensors_checkpoint(*resume_dir),
                           resume_dir->string());
    read_optimizer_state(*resume_dir / "optimizer-rank00000.safetensors", optimizer);
    std::ifstream in(*resume_dir / "trainer_state.json");
    const nlohmann::json state = nlohmann::json::parse(in);
    step = state.at("step").get<int64_t>();
    tokens_seen = state.at("tokens_seen").get<int64_t>();
    skipped_total = state.at("skipped_steps").get<int64_t>();
    source->restore(state.at("data_cursor"));
    truncate_metrics(metrics_path, step);
    spdlog::info("resumed from {} at step {}", resume_dir->string(), step);
    result.last_checkpoint = *resume_dir;
  }

  auto save = [&](int64_t at_step) {
    result.last_checkpoint = publish_checkpoint(checkpoint_root, at_step, [&](const fs::path& dir) {
      model::export_hf_checkpoint(dir, setup.config, model::hf_views(decoder.params(), setup.config));
      write_optimizer_state(dir / "optimizer-rank00000.safetensors", optimizer);
      nlohmann::ordered_json state;
      state["step"] = at_step;
      state["tokens_seen"] = tokens_seen;
      state["skipped_steps"] = skipped_total;
      state["data_cursor"] = source->cursor();
      state["seed"] = config.seed;
      std::ofstream(dir / "trainer_state.json") << state.dump(2) << "\n";
      std::ofstream(dir / "run_config.json") << dump_config(config) << "\n";
    });
    prune_checkpoints(checkpoint_root, config.checkpoint.keep_last);
    spdlog::info("checkpoint {}", result.last_checkpoint.string());
  };

  g_stop_signal.store(0);
  auto previous_int = std::signal(SIGINT, on_stop_signal);
  auto previous_term = std::signal(SIGTERM, on_stop_signal);
  std::ofstream metrics(metrics_path, std::ios::app);
  ProgressReporter progress(config.logging, config.schedule.max_steps, step);
  const double peak_flops = setup.device.is_cuda() ? 989e12 : 0.0;  // H200/H100 dense bf16 datasheet
  // Parameters used in matmuls: all but the embedding lookup (a tied lm_head reuses it).
  const double matmul_params = double(model::parameter_count(setup.config) -
                                      (setup.config.tie_word_embeddings ? 0 : setup.config.vocab_size * setup.config.hidden_size));

  try {
    while (config.schedule.max_steps == 0 || step < config.schedule.max_steps) {
      if (config.schedule.epochs > 0 && source->epoch() >= config.schedule.epochs) break;
      StepClock clock;
      // Fetch the whole step first: the loss is normalized by the trained tokens of the global
      // batch, which every micro-batch's backward needs as its gradient scale.
      std::vector<model::TokenBatch> micro;
      int64_t step_trained = 0, step_tokens = 0;
      double flops = 0;
      for (int64_t i = 0; i < accumulation; ++i) {
        const HostBatch hb = source->next();
        micro.push_back(model::TokenBatch::from_host(hb.input_ids, hb.labels, hb.cu_seqlens, setup.device, hb.positions));
        step_trained += micro.back().trained_tokens;
        step_tokens += int64_t(hb.input_ids.size());
        const double layers = double(setup.config.num_hidden_layers);
        flops += 6.0 * matmul_params * double(hb.input_ids.size()) +
                 layers * 14.0 * attention_pairs(micro.back().layout, setup.options.attention) *
                     double(setup.config.num_attention_heads * setup.config.head_dim);
      }
      ++step;
      decoder.zero_grads();
      double loss_sum = 0;
      const float grad_scale = step_trained > 0 ? 1.0f / float(step_trained) : 0.0f;
      for (const model::TokenBatch& b : micro) loss_sum += decoder.forward_backward(b, grad_scale).loss_sum;
      micro.clear();

      const double grad_norm = ops::global_grad_norm({decoder.grads().flat});
      const double lr = learning_rate(config.optim, config.schedule, step);
      const StepStats stats = optimizer.step(lr, grad_norm);
      tokens_seen += step_tokens;
      if (stats.skipped) {
        ++skipped_total;
        LRSA_CHECK(++consecutive_skips < kMaxConsecutiveSkips,
                   "step {}: gradient norm is {} for {} steps in a row; stopping (lower optim.lr, check the data, "
                   "or resume from the last checkpoint)", step, grad_norm, consecutive_skips);
        spdlog::warn("step {}: non-finite gradient norm ({}), step skipped", step, grad_norm);
      } else {
        consecutive_skips = 0;
      }

      StepRecord record;
      record.step = step;
      record.loss = step_trained > 0 ? loss_sum / double(step_trained) : 0.0;
      record.lr = lr;
      record.grad_norm = grad_norm;
      record.tokens = step_tokens;
      const double seconds = clock.seconds();
      record.tokens_per_s = double(step_tokens) / seconds;
      record.skipped = stats.skipped;
      result.steps.push_back(record);
      const double mfu = peak_flops > 0 ? flops / seconds / peak_flops : 0.0;
      const MemoryStats mem = memory_stats(setup.device);
      nlohmann::ordered_json line = {{"step", step},           {"loss", record.loss},
                                     {"lr", lr},               {"grad_norm", grad_norm},
                                     {"tokens", step_tokens},  {"trained_tokens", step_trained},
                                     {"tokens_per_s", record.tokens_per_s}, {"mfu", mfu},
                                     {"peak_bytes", mem.peak_bytes}, {"skipped", stats.skipped}};
      metrics << line.dump() << "\n";
      metrics.flush();
      progress.update(record, mfu, mem.peak_bytes);

      const bool stop = g_stop_signal.load() != 0 || (options.stop_after_step > 0 && step >= options.stop_after_step);
      const bool periodic = config.checkpoint.every_steps > 0 && step % config.checkpoint.every_steps == 0;
      if (stop || periodic) save(step);
      if (stop) {
        result.interrupted = true;
        spdlog::info("stopped at step {}{}", step, g_stop_signal.load() ? " by a signal; resume with --resume auto" : "");
        break;
      }
    }
    if (!result.interrupted && (result.last_checkpoint.empty() || checkpoint_step(result.last_checkpoint) != step)) save(step);
  } catch (...) {
    std::signal(SIGINT, previous_int);
    std::signal(SIGTERM, previous_term);
    throw;
  }
  std::signal(SIGINT, previous_int);
  std::signal(SIGTERM, previous_term);
  progress.finish();
  result.last_step = step;
  return result;
}

}  // namespace lrsa::train
