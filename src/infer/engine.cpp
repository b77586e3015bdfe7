#include "lrsa/infer/engine.h"

#include <algorithm>
#include <chrono>

#include "lrsa/core/op_profiler.h"
#include "lrsa/infer/cache_ops.h"
#ifdef LRSA_WITH_CUDA
#include "lrsa/core/cuda_backend.h"
#endif

namespace lrsa::infer {

namespace {

Tensor host_ints(const std::vector<int64_t>& values, Device device) {
  return Tensor::from_ints(values, {int64_t(values.size())}, DType::I32, device);
}

// Rows `rows` of x [T, C] stacked into [rows.size(), C].
Tensor take_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  Tensor out = Tensor::empty({int64_t(rows.size()), x.size(1)}, x.dtype(), x.device());
  for (size_t i = 0; i < rows.size(); ++i) out.slice(0, int64_t(i), int64_t(i) + 1).copy_(x.slice(0, rows[i], rows[i] + 1));
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// A decode step's CUDA graph and the buffers it reads and writes: the step's inputs are written
// before each replay (a copy from the host outside the graph), the logits by each replay.
struct Engine::DecodeGraph {
  Tensor step;    // [4, N] i32: ids, positions, sequences, row limits
  Tensor x;       // [N, C]: the embedded ids
  Tensor logits;  // [N, V] f32, in the graph's memory pool
#ifdef LRSA_WITH_CUDA
  std::unique_ptr<cuda::Graph> graph;
#endif
};

Engine::Engine(model::Decoder& decoder, const CacheSpec& spec) : decoder_(decoder), spec_(spec) {
  if (spec_.compress) spec_.lrsa.validate();
}

Engine::~Engine() = default;

int64_t Engine::chunk_tokens() const { return spec_.compress ? spec_.lrsa.lag : dense_chunk; }

KvCache Engine::make_cache(int64_t batch, int64_t max_tokens) const {
  const int64_t first_chunk = spec_.compress ? spec_.lrsa.sink + 2 * spec_.lrsa.lag : dense_chunk;
  return KvCache(decoder_.config(), spec_, batch, max_tokens, first_chunk, decoder_.params().flat.dtype(),
                 decoder_.device());
}

Tensor Engine::step(KvCache& cache, const std::vector<int64_t>& seqs, const std::vector<int32_t>& ids, bool all_logits) {
  const int64_t N = int64_t(ids.size());
  LRSA_CHECK(N >= 1 && seqs.size() == ids.size(), "Engine::step: {} sequence numbers for {} tokens", seqs.size(), N);
  struct Run {
    int64_t seq, first, count;
  };
  std::vector<Run> runs;
  std::vector<bool> seen(size_t(cache.batch()), false);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t b = seqs[size_t(i)];
    if (i > 0 && b == runs.back().seq) {
      ++runs.back().count;
      continue;
    }
    LRSA_CHECK(b >= 0 && b < cache.batch() && !seen[size_t(b)],
               "Engine::step: sequence {} invalid or its tokens not consecutive in the step", b);
    seen[size_t(b)] = true;
    runs.push_back({b, i, 1});
  }
  std::vector<int64_t> positions(static_cast<size_t>(N)), limits(static_cast<size_t>(N)), last_rows;
  for (const Run& r : runs) {
    cache.check_step(r.seq, r.count);
    for (int64_t j = 0; j < r.count; ++j) {
      positions[size_t(r.first + j)] = cache.tokens(r.seq) + j;
      limits[size_t(r.first + j)] = cache.rows(r.seq) + j + 1;  // its cache rows, then itself
    }
    last_rows.push_back(r.first + r.count - 1);
  }
  const Device device = decoder_.device();
  // ids, positions, sequences and row limits in one upload: [4, N] i32.
  std::vector<int64_t> packed(ids.begin(), ids.end());
  packed.insert(packed.end(), positions.begin(), positions.end());
  packed.insert(packed.end(), seqs.begin(), seqs.end());
  packed.insert(packed.end(), limits.begin(), limits.end());
  Tensor logits;
  if (DecodeGraph* g = int64_t(runs.size()) == N ? decode_graph(cache, N) : nullptr) {
    g->step.copy_(Tensor::from_ints(packed, {4, N}, DType::I32));
    // Into the graph's input, outside the graph: the embedding op checks the ids through a copy
    // to the host.
    decoder_.embed(g->step.select(0, 0), g->x);
#ifdef LRSA_WITH_CUDA
    if (!g->graph)
      g->graph = std::make_unique<cuda::Graph>(device, [&] {
        g->logits = decoder_.lm_logits(decoder_.final_norm(run_layers(cache, g->x, g->step)));
      });
    g->graph->launch();
#endif
    logits = g->logits;
  } else {
    const Tensor step_t = Tensor::from_ints(packed, {4, N}, DType::I32, device);
    const Tensor x = run_layers(cache, decoder_.embed(step_t.select(0, 0)), step_t);
    const bool every_row = all_logits || int64_t(last_rows.size()) == N;
    logits = decoder_.lm_logits(decoder_.final_norm(every_row ? x : take_rows(x, last_rows)));
  }
  for (const Run& r : runs) cache.commit_step(r.seq, r.count);
  return logits;
}

Tensor Engine::run_layers(KvCache& cache, Tensor x, const Tensor& step_t) {
  const model::ModelConfig& c = decoder_.config();
  const Tensor pos_t = step_t.select(0, 1), seq_t = step_t.select(0, 2), lim_t = step_t.select(0, 3);
  for (size_t l = 0; l < size_t(c.num_hidden_layers); ++l) {
    const Tensor qkv = decoder_.layer_qkv(l, x, pos_t);
    const model::QkvViews views = model::split_qkv(qkv, c);
    cache_append(views.k, views.v, seq_t, lim_t, cache.k(l), cache.v(l));
    Tensor out = Tensor::empty({x.size(0), c.num_attention_heads, c.head_dim}, x.dtype(), x.device());
    cache_attention(views.q, cache.k(l), cache.v(l), seq_t, lim_t, out);
    x = decoder_.layer_output(l, x, out);
  }
  return x;
}

int64_t Engine::captured_decode_graphs() const {
#ifdef LRSA_WITH_CUDA
  return std::count_if(graphs_.begin(), graphs_.end(), [](const auto& entry) { return entry.second && entry.second->graph; });
#else
  return 0;
#endif
}

Engine::DecodeGraph* Engine::decode_graph(const KvCache& cache, int64_t N) {
  // The op profiler brackets every op with events, which a graph would not replay.
  if (!decode_graphs || !decoder_.device().is_cuda() || profiler::enabled()) return nullptr;
  if (cache.id() != graph_cache_) {
    graphs_.clear();
    graph_cache_ = cache.id();
  }
  auto [it, first_step] = graphs_.try_emplace(N);
  if (first_step) return nullptr;  // eager: see decode_graphs
  if (!it->second) {
    const model::ModelConfig& c = decoder_.config();
    const Device device = decoder_.device();
    it->second = std::make_unique<DecodeGraph>();
    it->second->step = Tensor::empty({4, N}, DType::I32, device);
    it->second->x = Tensor::empty({N, c.hidden_size}, decoder_.params().flat.dtype(), device);
  }
  return it->second.get();
}

Tensor Engine::prefill_chunked(KvCache& cache, int64_t b, std::span<const int32_t> ids, bool all_logits) {
  const int64_t n = int64_t(ids.size());
  LRSA_CHECK(n >= 1 && cache.tokens(b) == 0, "Engine::prefill_chunked: sequence {} must be empty and the prompt non-empty", b);
  const int64_t first = spec_.compress ? spec_.lrsa.sink + 2 * spec_.lrsa.lag : dense_chunk;
  Tensor logits = all_logits ? Tensor::empty({n, decoder_.config().vocab_size}, DType::F32, decoder_.device()) : Tensor();
  for (int64_t start = 0; start < n;) {
    const int64_t count = std::min(n - start, start == 0 ? first : chunk_tokens());
    const Tensor part = step(cache, std::vector<int64_t>(size_t(count), b),
                             std::vector<int32_t>(ids.begin() + start, ids.begin() + start + count), all_logits);
    if (all_logits) logits.slice(0, start, start + count).copy_(part);
    else logits = part;
    start += count;
  }
  return logits;
}

Tensor Engine::prefill_whole(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts) {
  const int64_t B = int64_t(prompts.size());
  LRSA_CHECK(B >= 1 && B <= cache.batch(), "Engine::prefill_whole: {} prompts for a cache of {} sequences", B, cache.batch());
  std::vector<int64_t> ids, positions, lengths, last_rows;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[size_t(b)];
    LRSA_CHECK(!p.empty() && cache.tokens(b) == 0, "Engine::prefill_whole: prompt {} is empty or its sequence is not", b);
    for (size_t t = 0; t < p.size(); ++t) {
      ids.push_back(p[t]);
      positions.push_back(int64_t(t));
    }
    lengths.push_back(int64_t(p.size()));
    last_rows.push_back(int64_t(ids.size()) - 1);
  }
  const model::ModelConfig& c = decoder_.config();
  const Device device = decoder_.device();
  const attn::SeqLayout layout = attn::SeqLayout::from_lengths(lengths, device);
  // The cache's method, run as the decoder runs its own attention (the run's backend,
  // deterministic mode and cuDNN gather budget).
  attn::AttentionConfig attention = spec_.attention();
  const attn::AttentionConfig& run = decoder_.options().attention;
  attention.backend = run.backend;
  attention.deterministic = run.deterministic;
  attention.cudnn_gather_gib = run.cudnn_gather_gib;
  const Tensor pos_t = host_ints(positions, device);
  Tensor x = decoder_.embed(host_ints(ids, device));
  for (size_t l = 0; l < size_t(c.num_hidden_layers); ++l) {
    const Tensor qkv = decoder_.layer_qkv(l, x, pos_t);
    const model::QkvViews views = model::split_qkv(qkv, c);
    attn::AttentionForward result;
    attn::attention_forward(attention, views.q, views.k, views.v, layout, result);
    for (int64_t b = 0; b < B; ++b)
      cache.load_prefill(l, b, views.k, views.v, layout.cu_seqlens[size_t(b)], lengths[size_t(b)], result.selection, b);
    x = decoder_.layer_output(l, x, result.out);
  }
  for (int64_t b = 0; b < B; ++b) cache.finish_prefill(b, lengths[size_t(b)]);
  return decoder_.lm_logits(decoder_.final_norm(take_rows(x, last_rows)));
}

std::vector<int32_t> argmax_rows(const Tensor& logits) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const std::vector<float> values = logits.to_floats();
  std::vector<int32_t> out(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    const float* row = values.data() + n * V;
    out[size_t(n)] = int32_t(std::max_element(row, row + V) - row);  // first maximum: lowest id
  }
  return out;
}

GenerateResult generate(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options) {
  const int64_t B = int64_t(prompts.size());
  LRSA_CHECK(B >= 1 && options.max_new_tokens >= 1, "generate: {} prompts, max_new_tokens {}", B, options.max_new_tokens);
  GenerateResult result;
  result.outputs.resize(size_t(B));
  int64_t longest = 0;
  for (const auto& p : prompts) {
    longest = std::max<int64_t>(longest, int64_t(p.size()));
    result.prompt_tokens += int64_t(p.size());
  }
  KvCache cache = engine.make_cache(B, longest + options.max_new_tokens);

  auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> next;
  if (options.prefill == PrefillPath::Whole) {
    next = argmax_rows(engine.prefill_whole(cache, prompts));
  } else {
    for (int64_t b = 0; b < B; ++b) next.push_back(argmax_rows(engine.prefill_chunked(cache, b, prompts[size_t(b)], false))[0]);
  }
  result.prefill_s = seconds_since(start);
  result.prefill_cache = cache.usage();

  start = std::chrono::steady_clock::now();
  std::vector<int64_t> active(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) active[size_t(b)] = b;
  while (true) {
    std::vector<int64_t> feed_seqs;
    std::vector<int32_t> feed_ids;
    for (size_t i = 0; i < active.size(); ++i) {
      Generation& g = result.outputs[size_t(active[i])];
      const int32_t token = next[i];
      if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) {
        g.stopped = true;
        continue;
      }
      g.tokens.push_back(token);
      if (int64_t(g.tokens.size()) == options.max_new_tokens) continue;
      feed_seqs.push_back(active[i]);
      feed_ids.push_back(token);
    }
    if (feed_seqs.empty()) break;
    next = argmax_rows(engine.step(cache, feed_seqs, feed_ids, false));
    active = feed_seqs;
    ++result.decode_steps;
  }
  result.decode_s = seconds_since(start);
  result.final_cache = cache.usage();
  return result;
}

}  // namespace lrsa::infer
