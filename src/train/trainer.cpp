#include "lrsa/train/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <regex>

#include "lrsa/dist/comm.h"
#include "lrsa/dist/data_parallel.h"
#include "lrsa/core/op_profiler.h"
#include "lrsa/model/hf_export.h"
#include "lrsa/ops/matmul.h"
#include "lrsa/ops/optimizer.h"
#include "lrsa/train/checkpoint.h"
#include "lrsa/train/data_source.h"
#include "lrsa/train/optimizer.h"
#include "lrsa/train/progress.h"
#include "model/file_io.h"

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

// One rank's optimizer shard: master weights and moments of flat elements [shard_begin, shard_end).
void write_optimizer_state(const fs::path& path, Optimizer& optimizer) {
  model::write_safetensors(path, {{"master", optimizer.master()}, {"m", optimizer.m()}, {"v", optimizer.v()}},
                           {{"steps_taken", std::to_string(optimizer.steps_taken())},
                            {"shard_begin", std::to_string(optimizer.shard_begin())},
                            {"shard_end", std::to_string(optimizer.shard_end())}});
}

std::string optimizer_file_name(int rank) { return fmt::format("optimizer-rank{:05d}.safetensors", rank); }

// Fills this optimizer's shard from the shards of checkpoint `dir`, whatever world size wrote
// them (each file says which flat range it holds), so a run resumes on a different world size.
void read_optimizer_state(const fs::path& dir, Optimizer& optimizer) {
  const int64_t begin = optimizer.shard_begin(), end = optimizer.shard_end();
  const std::regex pattern(R"(optimizer-rank\d{5}\.safetensors)");
  int64_t covered = 0, steps = -1;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, pattern)) continue;
    const model::SafetensorsContents state = model::read_safetensors(entry.path());
    for (const char* key : {"shard_begin", "shard_end", "steps_taken"})
      LRSA_CHECK(state.metadata.count(key), "{}: metadata lacks '{}'", entry.path().string(), key);
    const int64_t file_begin = std::stoll(state.metadata.at("shard_begin")), file_end = std::stoll(state.metadata.at("shard_end"));
    const int64_t file_steps = std::stoll(state.metadata.at("steps_taken"));
    LRSA_CHECK(steps < 0 || steps == file_steps, "{}: steps_taken {} differs from the other shards' {}",
               entry.path().string(), file_steps, steps);
    steps = file_steps;
    const int64_t lo = std::max(begin, file_begin), hi = std::min(end, file_end);
    if (lo >= hi) continue;
    for (const char* key : {"master", "m", "v"}) {
      LRSA_CHECK(state.tensors.count(key) && state.tensors.at(key).numel() == file_end - file_begin,
                 "{}: tensor '{}' missing or not [{}]", entry.path().string(), key, file_end - file_begin);
      Tensor& dst = key[0] == 'm' && key[1] == 'a' ? optimizer.master() : key[0] == 'm' ? optimizer.m() : optimizer.v();
      dst.slice(0, lo - begin, hi - begin).copy_(state.tensors.at(key).slice(0, lo - file_begin, hi - file_begin));
    }
    covered += hi - lo;
  }
  LRSA_CHECK(covered == end - begin,
             "{}: the optimizer shards cover {} of the {} elements [{}, {}) this rank needs (shards overlap or are "
             "missing, or the model differs)", dir.string(), covered, end - begin, begin, end);
  optimizer.set_steps_taken(steps);
}

// Each layer's range of the flat arena, in layer order (data-parallel buckets).
std::vector<dist::Range> layer_ranges(const model::ModelConfig& c) {
  std::vector<dist::Range> ranges(size_t(c.num_hidden_layers), dist::Range{INT64_MAX, 0});
  for (const model::ParamEntry& e : model::parameter_layout(c)) {
    if (!e.name.starts_with("layers.")) continue;
    dist::Range& r = ranges[size_t(std::stoll(e.name.substr(7)))];
    r.begin = std::min(r.begin, e.offset);
    r.end = std::max(r.end, e.offset + shape_numel(e.shape));
  }
  return ranges;
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
  s.options.attention.backend = config.attention.backend;
  s.options.attention.cudnn_gather_gib = config.attention.cudnn_gather_gib;
  s.gemm_candidates = config.precision.deterministic ? 1 : ops::kTrainingGemmCandidates;
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

namespace {

// The checkpoint to resume from, chosen by rank 0 and the same on every rank.
std::optional<fs::path> choose_resume_dir(const TrainOptions& options, const fs::path& checkpoint_root, dist::Comm& comm) {
  nlohmann::json choice = {{"dir", ""}, {"error", ""}};
  if (comm.is_root()) {
    if (options.resume == "auto") {
      const auto found = latest_valid_checkpoint(checkpoint_root, [](const std::string& w) { spdlog::warn("{}", w); });
      if (found) choice["dir"] = found->string();
      else spdlog::info("resume auto: no valid checkpoint under {}, starting fresh", checkpoint_root.string());
    } else if (!options.resume.empty()) {
      const std::string problem = verify_checkpoint(options.resume);
      if (problem.empty()) choice["dir"] = options.resume;
      else choice["error"] = fmt::format("--resume {}: {}", options.resume, problem);
    }
  }
  choice = nlohmann::json::parse(comm.broadcast(choice.dump(), 0, "broadcast of the resume checkpoint"));
  LRSA_CHECK(choice["error"].get<std::string>().empty(), "{}", choice["error"].get<std::string>());
  const std::string dir = choice["dir"].get<std::string>();
  return dir.empty() ? std::nullopt : std::optional<fs::path>(dir);
}

TrainResult train_ranks(const RunConfig& config, const TrainOptions& options, std::unique_ptr<BatchSource> source,
                        dist::Comm& comm) {
  const int world = comm.size(), rank = comm.rank();
  if (!comm.is_root()) spdlog::set_level(spdlog::level::warn);  // rank 0 speaks for the job
  LRSA_CHECK(config.batch.tokens_per_step % (config.batch.micro_batch_tokens * world) == 0,
             "batch.tokens_per_step = {} is not a multiple of batch.micro_batch_tokens * world size = {} * {} (the config "
             "was validated for another world size)", config.batch.tokens_per_step, config.batch.micro_batch_tokens, world);
  ModelSetup setup = resolve_model(config);
  const bool zero1 = config.distributed.zero1 && world > 1;
  if (setup.device.is_cuda()) {
#ifdef LRSA_WITH_CUDA
    // One GPU per process: the node-local rank picks it.
    int devices = 0;
    LRSA_CUDA_CHECK(cudaGetDeviceCount(&devices));
    LRSA_CHECK(comm.local_rank() < devices, "rank {} is local rank {} on its host, which has only {} GPUs: launch at "
               "most {} processes per host", rank, comm.local_rank(), devices, devices);
    LRSA_CUDA_CHECK(cudaSetDevice(comm.local_rank()));
    setup.device = Device::cuda(comm.local_rank());
#endif
    ops::set_gemm_candidates(setup.gemm_candidates);
  }
  const int64_t accumulation = config.batch.accumulation_steps(world);
  const model::MemoryPlan plan = model::plan_memory(setup.config, setup.options, setup.param_dtype,
                                                    config.batch.micro_batch_tokens, zero1 ? world : 1);
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
  // Data parallel: gradients reduced while backward runs; ZeRO-1 shards the optimizer.
  std::unique_ptr<dist::DataParallel> data_parallel;
  dist::Range shard{0, decoder.params().flat.numel()};
  if (world > 1) {
    const dist::Transport transport = setup.device.is_cuda() ? dist::Transport::Nccl : dist::Transport::Mpi;
    data_parallel = std::make_unique<dist::DataParallel>(comm, transport, decoder.grads().flat, decoder.params().flat,
                                                         layer_ranges(setup.config),
                                                         config.distributed.bucket_mb << 20, zero1);
    shard = data_parallel->shard();
    decoder.set_grads_ready_callback([&](int64_t layer) { data_parallel->on_grads_ready(layer); });
    spdlog::info("data parallel: {} ranks over {}, {} gradient buckets of ~{} MiB{}", world,
                 transport == dist::Transport::Nccl ? "NCCL" : "MPI", data_parallel->num_buckets(),
                 config.distributed.bucket_mb, zero1 ? ", optimizer sharded (ZeRO-1)" : "");
  }
  Optimizer optimizer(decoder, config.optim, shard.begin, shard.end);
  // Every rank reads the same global stream of micro-batches and keeps every world-th one, so
  // a step trains on the same samples at any world size and the cursor is world-independent.
  if (!source) source = make_train_source(config, 0, 1);

  const fs::path output_dir = config.output_dir;
  const fs::path checkpoint_root = config.checkpoint.dir;
  const fs::path metrics_path = config.logging.metrics_file;
  std::error_code output_ec;
  fs::create_directories(output_dir, output_ec);
  LRSA_CHECK(!output_ec, "output_dir: cannot create {}: {}", output_dir.string(), output_ec.message());

  int64_t step = 0, tokens_seen = 0, consecutive_skips = 0, skipped_total = 0;
  TrainResult result;
  // Resume: weights, optimizer state, data cursor and counters from a checkpoint.
  if (const std::optional<fs::path> resume_dir = choose_resume_dir(options, checkpoint_root, comm)) {
    model::load_hf_weights(decoder.params(), setup.config, model::load_safetensors_checkpoint(*resume_dir),
                           resume_dir->string());
    read_optimizer_state(*resume_dir, optimizer);
    std::ifstream in(*resume_dir / "trainer_state.json");
    const nlohmann::json state = nlohmann::json::parse(in);
    step = state.at("step").get<int64_t>();
    tokens_seen = state.at("tokens_seen").get<int64_t>();
    skipped_total = state.at("skipped_steps").get<int64_t>();
    source->restore(state.at("data_cursor"));
    if (comm.is_root()) truncate_metrics(metrics_path, step);
    spdlog::info("resumed from {} at step {} (written by {} rank(s), now {})", resume_dir->string(), step,
                 state.value("world_size", 1), world);
    result.last_checkpoint = *resume_dir;
  }

  // Rank 0 writes the model and run state, every rank its optimizer shard (without ZeRO-1 the
  // ranks hold identical state and rank 0 writes it once).
  auto save = [&](int64_t at_step) {
    result.last_checkpoint = publish_checkpoint(checkpoint_root, at_step, [&](const fs::path& dir) {
      if (zero1 || comm.is_root()) write_optimizer_state(dir / optimizer_file_name(rank), optimizer);
      if (!comm.is_root()) return;
      model::export_hf_checkpoint(dir, setup.config, model::hf_views(decoder.params(), setup.config));
      nlohmann::ordered_json state;
      state["step"] = at_step;
      state["tokens_seen"] = tokens_seen;
      state["skipped_steps"] = skipped_total;
      state["data_cursor"] = source->cursor();
      state["seed"] = config.seed;
      state["world_size"] = world;
      // Checked writes: a failure is an error naming the file, never a short file in the manifest.
      model::write_file_atomic(dir / "trainer_state.json", state.dump(2) + "\n");
      model::write_file_atomic(dir / "run_config.json", dump_config(config));
    }, comm);
    if (comm.is_root()) prune_checkpoints(checkpoint_root, config.checkpoint.keep_last);
    spdlog::info("checkpoint {}", result.last_checkpoint.string());
  };

  g_stop_signal.store(0);
  auto previous_int = std::signal(SIGINT, on_stop_signal);
  auto previous_term = std::signal(SIGTERM, on_stop_signal);
  std::ofstream metrics;
  if (comm.is_root()) metrics.open(metrics_path, std::ios::app);
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
      // batch, which every micro-batch's backward needs as its gradient scale. This rank trains
      // micro-batches rank, rank + world, ... of the step's accumulation * world.
      std::vector<model::TokenBatch> micro;
      double counts[3] = {0, 0, 0};  // trained tokens, tokens, FLOPs of the step: summed over ranks
      for (int64_t i = 0; i < accumulation * world; ++i) {
        const HostBatch hb = source->next();
        if (i % world != rank) continue;
        micro.push_back(model::TokenBatch::from_host(hb.input_ids, hb.labels, hb.cu_seqlens, setup.device, hb.positions));
        counts[0] += double(micro.back().trained_tokens);
        counts[1] += double(hb.input_ids.size());
        const double layers = double(setup.config.num_hidden_layers);
        counts[2] += 6.0 * matmul_params * double(hb.input_ids.size()) +
                     layers * 14.0 * attention_pairs(micro.back().layout, setup.options.attention) *
                         double(setup.config.num_attention_heads * setup.config.head_dim);
      }
      comm.allreduce_sum(counts, "all-reduce of the step's token counts");
      const int64_t step_trained = int64_t(counts[0]), step_tokens = int64_t(counts[1]);
      const double flops = counts[2];
      ++step;
      double loss_sum = 0;
      const float grad_scale = step_trained > 0 ? 1.0f / float(step_trained) : 0.0f;
      for (size_t j = 0; j < micro.size(); ++j) {
        // The first micro-batch replaces the last step's gradients, the others add to them; they
        // are reduced during the last one's backward.
        if (data_parallel && j + 1 == micro.size()) data_parallel->arm();
        const ops::GradWrite write = j == 0 ? ops::GradWrite::Overwrite : ops::GradWrite::Accumulate;
        loss_sum += decoder.forward_backward(micro[j], grad_scale, write).loss_sum;
      }
      micro.clear();
      if (data_parallel) data_parallel->finish();

      // ZeRO-1: each rank holds the reduced gradients of its shard only; the squared norms add up.
      const Tensor local_grads = decoder.grads().flat.slice(0, shard.begin, shard.end);
      const double local_norm = ops::global_grad_norm({local_grads});
      double sums[3] = {loss_sum, zero1 ? local_norm * local_norm : 0.0, double(g_stop_signal.load() != 0)};
      comm.allreduce_sum(sums, "all-reduce of the step's loss");
      loss_sum = sums[0];
      const double grad_norm = zero1 ? std::sqrt(sums[1]) : local_norm;
      const bool stop_signalled = sums[2] > 0;
      const double lr = learning_rate(config.optim, config.schedule, step);
      const StepStats stats = optimizer.step(lr, grad_norm);
      if (data_parallel && !stats.skipped) data_parallel->all_gather_params();
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
      const double mfu = peak_flops > 0 ? flops / seconds / (peak_flops * world) : 0.0;
      const MemoryStats mem = memory_stats(setup.device);
      if (comm.is_root()) {
        nlohmann::ordered_json line = {{"step", step},           {"loss", record.loss},
                                       {"lr", lr},               {"grad_norm", grad_norm},
                                       {"tokens", step_tokens},  {"trained_tokens", step_trained},
                                       {"tokens_per_s", record.tokens_per_s}, {"mfu", mfu},
                                       {"peak_bytes", mem.peak_bytes}, {"skipped", stats.skipped}};
        metrics << line.dump() << "\n";
        metrics.flush();
        progress.update(record, mfu, mem.peak_bytes);
      }
      if (profiler::enabled() && result.steps.size() == 1) profiler::reset();  // drop the warm-up step

      const bool stop = stop_signalled || (options.stop_after_step > 0 && step >= options.stop_after_step);
      const bool periodic = config.checkpoint.every_steps > 0 && step % config.checkpoint.every_steps == 0;
      if (stop || periodic) save(step);
      if (stop) {
        result.interrupted = true;
        spdlog::info("stopped at step {}{}", step, stop_signalled ? " by a signal; resume with --resume auto" : "");
        break;
      }
    }
    if (profiler::enabled() && comm.is_root())
      spdlog::info("LRSA_PROFILE_OPS: GPU time per op over this run's steps after the first\n{}", profiler::report());
    if (!result.interrupted && (result.last_checkpoint.empty() || checkpoint_step(result.last_checkpoint) != step)) save(step);
    comm.barrier("the final barrier");
  } catch (...) {
    std::signal(SIGINT, previous_int);
    std::signal(SIGTERM, previous_term);
    throw;
  }
  std::signal(SIGINT, previous_int);
  std::signal(SIGTERM, previous_term);
  if (comm.is_root()) progress.finish();
  result.last_step = step;
  return result;
}

}  // namespace

TrainResult run_training(const RunConfig& config, const TrainOptions& options, std::unique_ptr<BatchSource> source) {
  dist::Comm& comm = dist::Comm::world();
  comm.set_timeout_s(config.distributed.timeout_s);
  try {
    return train_ranks(config, options, std::move(source), comm);
  } catch (const std::exception& e) {
    // One rank failing ends the job: the others would wait for it in their next collective.
    if (comm.multi()) comm.abort(fmt::format("training failed: {}", e.what()));
    throw;
  }
}

}  // namespace lrsa::train
