#pragma once
// The inference KV cache, dense or LagKV-compressed (docs/inference.md; docs/lrsa-spec.md "The
// same thing at inference"). Per layer, K and V [B, capacity, Hk, D] in the model's dtype (K after
// RoPE). Sequence b holds rows [0, rows(b)) of every layer and KV head:
//   [sink: min(tokens, S) | compressed history: K rows per compressed partition | raw tail]
// Each KV head keeps its own selection, so row r of two heads may hold different positions; the
// row count is the same for all heads and layers. A dense cache is one raw tail.
#include <cstdint>
#include <string>
#include <vector>

#include "lrsa/attn/attention.h"
#include "lrsa/model/config.h"

namespace lrsa::infer {

struct CacheSpec {
  bool compress = false;  // false: dense (every row kept)
  attn::LrsaParams lrsa;  // S, L, r, lambda of the compression (compress only)

  static CacheSpec dense() { return {}; }
  static CacheSpec lagkv(const attn::LrsaParams& params);  // validates the parameters
  // The training attention that lets each query see exactly what a decode step sees.
  attn::AttentionConfig attention() const;
  std::string name() const;  // "dense" or "lagkv r=0.25"
};

// Rows one layer and KV head keeps after `tokens` tokens (spec: S + K (floor((N - S) / L) - 1) +
// L + (N - S) mod L once N >= S + 2L; every token before that; `tokens` when dense).
int64_t cache_rows(const CacheSpec& spec, int64_t tokens);

// Whether a step may process positions [first, first + count) at once: no partition completes
// strictly inside it, since then the step's later queries would need a compression that
// happens only after the step (always true for a dense cache).
bool step_fits(const CacheSpec& spec, int64_t first, int64_t count);

// Memory of the cache rows held: all layers, K and V, against a dense cache of the same tokens.
struct CacheUsage {
  int64_t rows = 0, dense_rows = 0;  // summed over sequences, per layer and KV head
  int64_t bytes = 0, dense_bytes = 0;
  double kept_fraction() const { return dense_rows > 0 ? double(rows) / double(dense_rows) : 1.0; }
};

class KvCache {
 public:
  // Room for `batch` sequences of up to max_tokens tokens each, processed in steps of up to
  // max_step tokens (rows are appended before the step's compression).
  KvCache(const model::ModelConfig& config, const CacheSpec& spec, int64_t batch, int64_t max_tokens,
          int64_t max_step, DType dtype, Device device);

  const CacheSpec& spec() const { return spec_; }
  // Unique to each cache constructed (never reused): what the Engine's CUDA graphs, which bake the
  // cache's buffer addresses, are captured for.
  uint64_t id() const { return id_; }
  int64_t batch() const { return int64_t(tokens_.size()); }
  int64_t capacity() const { return capacity_; }
  int64_t layers() const { return int64_t(k_.size()); }
  int64_t tokens(int64_t b) const { return tokens_.at(size_t(b)); }  // positions processed
  int64_t rows(int64_t b) const { return rows_.at(size_t(b)); }
  Tensor& k(size_t layer) { return k_.at(layer); }  // [B, capacity, Hk, D]
  Tensor& v(size_t layer) { return v_.at(layer); }
  CacheUsage usage() const;

  // A step of `count` tokens of sequence b writes its rows [rows(b), rows(b) + count) in every
  // layer (check_step: capacity and step_fits), then commit_step counts them and compresses
  // every layer while the raw tail holds two complete partitions.
  void check_step(int64_t b, int64_t count) const;
  void commit_step(int64_t b, int64_t count);

  // Fills empty sequence b from one forward pass over its whole prompt: k, v [T, Hk, D] of one
  // layer over a packed batch whose rows [start, start + count) are this sequence, and that
  // pass's LRSA selection (its document `doc`; ignored for a dense cache). Call for every
  // layer, then finish_prefill(b, count).
  void load_prefill(size_t layer, int64_t b, const Tensor& k, const Tensor& v, int64_t start, int64_t count,
                    const attn::LrsaSelection& selection, int64_t doc);
  void finish_prefill(int64_t b, int64_t count);

 private:
  void compress_oldest(int64_t b);  // partition compressed_(b) of every layer -> its Sel rows
  int64_t tail_row(int64_t b) const;  // first row of the raw tail

  CacheSpec spec_;
  uint64_t id_ = 0;
  int64_t capacity_ = 0, kept_ = 0;
  std::vector<Tensor> k_, v_;
  std::vector<int64_t> tokens_, rows_, compressed_;  // per sequence
};

}  // namespace lrsa::infer
