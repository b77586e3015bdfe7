#include "lrsa/infer/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>

#include "lrsa/infer/cache_ops.h"

namespace lrsa::infer {

CacheSpec CacheSpec::lagkv(const attn::LrsaParams& params) {
  params.validate();
  CacheSpec spec;
  spec.compress = true;
  spec.lrsa = params;
  return spec;
}

attn::AttentionConfig CacheSpec::attention() const {
  attn::AttentionConfig config;
  config.mode = compress ? attn::Mode::Lrsa : attn::Mode::Dense;
  config.lrsa = lrsa;
  return config;
}

std::string CacheSpec::name() const { return compress ? fmt::format("lagkv r={}", lrsa.ratio) : "dense"; }

int64_t cache_rows(const CacheSpec& spec, int64_t tokens) {
  const int64_t S = spec.lrsa.sink, L = spec.lrsa.lag;
  if (!spec.compress || tokens < S + 2 * L) return tokens;
  return S + spec.lrsa.kept() * ((tokens - S) / L - 1) + L + (tokens - S) % L;
}

bool step_fits(const CacheSpec& spec, int64_t first, int64_t count) {
  if (!spec.compress) return true;
  const int64_t S = spec.lrsa.sink, L = spec.lrsa.lag, last = first + count - 1;
  // Partition boundaries S + mL, m >= 2, are where compression falls due: the step may start
  // on one but must not contain one after its first position.
  if (last < S + 2 * L) return true;
  const int64_t next_boundary = first < S + 2 * L ? S + 2 * L : S + ((first - S) / L + 1) * L;
  return next_boundary > last;
}

namespace {
uint64_t next_cache_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}
}  // namespace

KvCache::KvCache(const model::ModelConfig& config, const CacheSpec& spec, int64_t batch, int64_t max_tokens,
                 int64_t max_step, DType dtype, Device device)
    : spec_(spec), id_(next_cache_id()), tokens_(size_t(batch), 0), rows_(size_t(batch), 0), compressed_(size_t(batch), 0) {
  LRSA_CHECK(batch >= 1 && max_tokens >= 1 && max_step >= 1, "KvCache: batch {}, max_tokens {}, max_step {} must be >= 1",
             batch, max_tokens, max_step);
  if (spec_.compress) {
    spec_.lrsa.validate();
    kept_ = spec_.lrsa.kept();
  }
  int64_t most = 0;
  for (int64_t t = 0; t <= max_tokens; ++t) most = std::max(most, cache_rows(spec_, t));
  capacity_ = std::min(max_tokens, most + max_step);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    k_.push_back(Tensor::empty({batch, capacity_, config.num_key_value_heads, config.head_dim}, dtype, device));
    v_.push_back(Tensor::empty({batch, capacity_, config.num_key_value_heads, config.head_dim}, dtype, device));
  }
}

CacheUsage KvCache::usage() const {
  CacheUsage u;
  for (size_t b = 0; b < tokens_.size(); ++b) {
    u.rows += rows_[b];
    u.dense_rows += tokens_[b];
  }
  if (!k_.empty()) {
    const int64_t per_row = int64_t(k_.size()) * 2 * k_[0].size(2) * k_[0].size(3) * int64_t(k_[0].element_size());
    u.bytes = u.rows * per_row;
    u.dense_bytes = u.dense_rows * per_row;
  }
  return u;
}

void KvCache::check_step(int64_t b, int64_t count) const {
  LRSA_CHECK(b >= 0 && b < batch(), "KvCache: sequence {} outside a batch of {}", b, batch());
  LRSA_CHECK(rows(b) + count <= capacity_, "KvCache: sequence {} needs {} rows, capacity is {} (max_tokens/max_step too small)",
             b, rows(b) + count, capacity_);
  LRSA_CHECK(step_fits(spec_, tokens(b), count),
             "KvCache: a step over positions [{}, {}) crosses a partition boundary (S = {}, L = {}); split it there", tokens(b),
             tokens(b) + count, spec_.lrsa.sink, spec_.lrsa.lag);
}

int64_t KvCache::tail_row(int64_t b) const {
  return std::min(tokens(b), spec_.lrsa.sink) + compressed_[size_t(b)] * kept_;
}

void KvCache::commit_step(int64_t b, int64_t count) {
  tokens_[size_t(b)] += count;
  rows_[size_t(b)] += count;
  if (!spec_.compress) return;
  const int64_t S = spec_.lrsa.sink, L = spec_.lrsa.lag;
  while (tokens(b) >= S + (compressed_[size_t(b)] + 2) * L) compress_oldest(b);
}

void KvCache::compress_oldest(int64_t b) {
  const int64_t L = spec_.lrsa.lag, K = kept_, r0 = tail_row(b), end = rows(b);
  attn::LrsaParams pair = spec_.lrsa;  // the two partitions alone: Sel(0) scored against partition 1
  pair.sink = 0;
  const attn::SeqLayout layout = attn::SeqLayout::single(2 * L, k_[0].device());
  for (size_t l = 0; l < k_.size(); ++l) {
    Tensor ks = k_[l].select(0, b), vs = v_[l].select(0, b);
    const attn::LrsaSelection sel = attn::lrsa_select(ks.slice(0, r0, r0 + 2 * L), vs.slice(0, r0, r0 + 2 * L), layout, pair);
    const Tensor index = sel.indices.view({sel.indices.size(0), K});
    // Gather the kept rows and the rows after the compressed partition first, then write both
    // back: the destination overlaps the source.
    for (Tensor* rows : {&ks, &vs}) {
      const Tensor window = rows->slice(0, r0, r0 + 2 * L);
      Tensor kept = Tensor::empty({K, rows->size(1), rows->size(2)}, rows->dtype(), rows->device());
      gather_head_rows(window, index, kept);
      const Tensor rest = rows->slice(0, r0 + L, end).clone();
      rows->slice(0, r0, r0 + K).copy_(kept);
      rows->slice(0, r0 + K, r0 + K + (end - r0 - L)).copy_(rest);
    }
  }
  rows_[size_t(b)] -= L - K;
  ++compressed_[size_t(b)];
}

void KvCache::load_prefill(size_t layer, int64_t b, const Tensor& k, const Tensor& v, int64_t start, int64_t count,
                           const attn::LrsaSelection& selection, int64_t doc) {
  LRSA_CHECK(tokens(b) == 0, "KvCache::load_prefill: sequence {} is not empty", b);
  LRSA_CHECK(cache_rows(spec_, count) <= capacity_, "KvCache::load_prefill: {} tokens need {} rows, the capacity is {}",
             count, cache_rows(spec_, count), capacity_);
  const int64_t S = spec_.lrsa.sink, L = spec_.lrsa.lag;
  const int64_t parts = spec_.compress ? attn::selectable_partitions(count, spec_.lrsa) : 0;
  const int64_t sink = parts > 0 ? S : 0, history = parts * kept_, tail_from = sink + parts * L;
  for (int pass = 0; pass < 2; ++pass) {
    const Tensor& src = pass == 0 ? k : v;
    Tensor dst = (pass == 0 ? k_ : v_).at(layer).select(0, b);
    const Tensor seq = src.slice(0, start, start + count);
    if (sink > 0) dst.slice(0, 0, sink).copy_(seq.slice(0, 0, sink));
    if (history > 0) {
      const int64_t first = selection.part_offset.at(size_t(doc)), last = selection.part_offset.at(size_t(doc) + 1);
      LRSA_CHECK(last - first == parts, "KvCache::load_prefill: the selection has {} partitions for document {}, expected {}",
                 last - first, doc, parts);
      // Absolute rows of the packed batch, partition by partition: [Hk, parts * K].
      const Tensor index = selection.indices.slice(1, first, last).contiguous().view({selection.indices.size(0), history});
      Tensor hist = dst.slice(0, sink, sink + history);
      gather_head_rows(src, index, hist);
    }
    dst.slice(0, sink + history, sink + history + count - tail_from).copy_(seq.slice(0, tail_from, count));
  }
}

void KvCache::finish_prefill(int64_t b, int64_t count) {
  tokens_[size_t(b)] = count;
  rows_[size_t(b)] = cache_rows(spec_, count);
  compressed_[size_t(b)] = spec_.compress ? attn::selectable_partitions(count, spec_.lrsa) : 0;
}

}  // namespace lrsa::infer
