#pragma once
// Inference with a KV cache (docs/inference.md): prefill (chunked, the reference, or one LRSA
// forward pass over the whole prompt) and greedy decoding over a dense or LagKV-compressed cache.
// The attention a token gets is exactly what the training forward pass (Decoder with
// spec.attention()) gives the same position.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "lrsa/infer/kv_cache.h"
#include "lrsa/model/decoder.h"

namespace lrsa::infer {

enum class PrefillPath {
  Chunked,  // the spec's procedure: a first chunk of S + 2L tokens, then chunks of L
  Whole,    // one forward pass over all prompts, its selections then build the cache (faster)
};

class Engine {
 public:
  Engine(model::Decoder& decoder, const CacheSpec& spec);
  ~Engine();

  const CacheSpec& spec() const { return spec_; }
  model::Decoder& decoder() { return decoder_; }
  // A cache for `batch` sequences of up to max_tokens tokens (prompt and generated).
  KvCache make_cache(int64_t batch, int64_t max_tokens) const;
  // Chunk size of the chunked prefill after its first chunk (L; dense: dense_chunk).
  int64_t chunk_tokens() const;

  // One step: token ids[i] for sequence seqs[i]; a sequence's tokens must be consecutive in the
  // list and take the next positions (tokens(b), tokens(b) + 1, ...). Every token attends to its
  // sequence's cache and the step's earlier tokens, then the cache compresses. Returns logits
  // [N, V] f32 of every token (all_logits) or of each sequence's last token, in order of
  // appearance.
  // On CUDA a decode step (one token per sequence) replays a CUDA graph (decode_graphs), and the
  // tensor returned is that graph's output buffer: read or copy it before this engine's next step
  // with as many sequences, which overwrites it. (A copy per step would cost a launch that every
  // caller so far, reading the logits at once, does not need.)
  Tensor step(KvCache& cache, const std::vector<int64_t>& seqs, const std::vector<int32_t>& ids, bool all_logits);

  // The chunked prefill of sequence b (empty) with the prompt ids: logits [n, V] of every
  // position (all_logits) or [1, V] of the last.
  Tensor prefill_chunked(KvCache& cache, int64_t b, std::span<const int32_t> ids, bool all_logits);
  // Prompt i into sequence i of an empty cache, in one forward pass; logits [B, V] of each
  // prompt's last token.
  Tensor prefill_whole(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts);

  int64_t dense_chunk = 1024;  // chunk of a dense cache's chunked prefill
  // On CUDA, replay decode steps from CUDA graphs, one per cache and number of sequences, captured
  // at the second decode step of that size (the first, eager, creates what ops create lazily on
  // first use, e.g. cuBLASLt's handle and workspace, which a capture must not). One launch per
  // step instead of ~15 per layer, so a small batch is no longer launch-bound. Off: every step
  // launches its kernels (eager). Never used on the CPU or while the op profiler is on.
  bool decode_graphs = true;
  int64_t captured_decode_graphs() const;  // graphs held now (for tests)

 private:
  struct DecodeGraph;
  // The layers of a step over x [N, C]; step_t [4, N] i32 holds the ids, positions, sequences
  // and row limits. Appends the step's K/V rows to the cache.
  Tensor run_layers(KvCache& cache, Tensor x, const Tensor& step_t);
  // The graph of a decode step of N sequences on this cache, or null for an eager step.
  DecodeGraph* decode_graph(const KvCache& cache, int64_t N);

  model::Decoder& decoder_;
  CacheSpec spec_;
  // Graphs of the cache graph_cache_ by number of sequences (null: one eager step done); a step
  // on another cache drops them, as they bake this one's addresses.
  uint64_t graph_cache_ = 0;
  std::map<int64_t, std::unique_ptr<DecodeGraph>> graphs_;
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  std::vector<int32_t> stop_tokens;  // generation ends after any of these (not included in the output)
  PrefillPath prefill = PrefillPath::Whole;
};

struct Generation {
  std::vector<int32_t> tokens;  // generated, without the stop token
  bool stopped = false;         // ended on a stop token (else on max_new_tokens)
};

struct GenerateResult {
  std::vector<Generation> outputs;  // one per prompt
  CacheUsage prefill_cache;         // after prefill
  CacheUsage final_cache;           // after the last decode step
  double prefill_s = 0, decode_s = 0;
  int64_t prompt_tokens = 0, decode_steps = 0;
};

// Greedy decoding of a batch of prompts (argmax, lowest id on ties).
GenerateResult generate(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options);

// Index of the largest value of each row of logits [N, V] f32 (lowest index on ties).
std::vector<int32_t> argmax_rows(const Tensor& logits);

}  // namespace lrsa::infer
