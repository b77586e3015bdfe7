#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lrsa/model/decoder.h"
#include "support/compare.h"

using namespace lrsa;
using namespace lrsa::model;

namespace {

ModelConfig tiny_config(Architecture arch, bool tied) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.attention_bias = arch == Architecture::Qwen2;
  c.max_position_embeddings = 4096;
  return c;
}

TokenBatch random_batch(const ModelConfig& c, const std::vector<int64_t>& cu_seqlens, uint64_t seed) {
  const int64_t T = cu_seqlens.back();
  Tensor ids = Tensor::uniform({T}, seed, 0, 0.0f, float(c.vocab_size));
  Tensor trained = Tensor::uniform({T}, seed, 1, 0.0f, 1.0f);
  std::vector<int32_t> input_ids, labels;
  const std::vector<float> id_values = ids.to_floats(), trained_values = trained.to_floats();
  for (int64_t t = 0; t < T; ++t) {
    input_ids.push_back(int32_t(id_values[size_t(t)]));
    labels.push_back(trained_values[size_t(t)] < 0.7f ? input_ids.back() : -100);
  }
  return TokenBatch::from_host(input_ids, labels, cu_seqlens, Device::cpu());
}

attn::AttentionConfig lrsa_attention(double ratio) {
  attn::AttentionConfig a;
  a.mode = attn::Mode::Lrsa;
  a.lrsa.sink = 2;
  a.lrsa.lag = 4;
  a.lrsa.ratio = ratio;
  return a;
}

}  // namespace

TEST_CASE("TokenBatch shifts labels per document", "[model]") {
  TokenBatch b = TokenBatch::from_host({5, 6, 7, 8, 9}, {-100, 6, 7, 8, 9}, {0, 3, 5}, Device::cpu());
  CHECK(b.targets.to_ints() == std::vector<int64_t>{6, 7, -100, 9, -100});
  CHECK(b.positions.to_ints() == std::vector<int64_t>{0, 1, 2, 0, 1});
  CHECK(b.trained_tokens == 3);
  CHECK_THROWS_WITH(TokenBatch::from_host({1, 2}, {1}, {0, 2}, Device::cpu()), Catch::Contains("1 labels for 2"));
}

TEST_CASE("decoder gradients match finite differences", "[model]") {
  for (bool tied : {false, true}) {
    for (auto mode : {attn::Mode::Dense, attn::Mode::Lrsa}) {
      const Architecture arch = tied ? Architecture::Llama : Architecture::Qwen2;
      const ModelConfig c = tiny_config(arch, tied);
      DecoderOptions options;
      if (mode == attn::Mode::Lrsa) options.attention = lrsa_attention(0.5);
      options.loss_chunk_rows = 7;  // several chunks
      Decoder model(c, options, DType::F32, Device::cpu());
      init_params(model.params(), c, 11, 0.2f);
      TokenBatch batch = random_batch(c, {0, 19, 30}, 3);
      // Overwritten from NaN: every gradient must be written, none read.
      model.grads().flat.fill_(std::numeric_limits<double>::quiet_NaN());
      const LossSums base = model.forward_backward(batch, 1.0f, ops::GradWrite::Overwrite);
      REQUIRE(base.tokens == batch.trained_tokens);
      const std::vector<float> grads = model.grads().flat.to_floats();
      CHECK(std::all_of(grads.begin(), grads.end(), [](float g) { return std::isfinite(g); }));

      // Central differences on a spread of parameters (every tensor of the layout is hit).
      float* w = model.params().flat.data_as<float>();
      const int64_t P = model.params().flat.numel();
      int checked = 0;
      for (const ParamEntry& e : parameter_layout(c)) {
        for (int64_t k = 0; k < 3; ++k) {
          const int64_t i = e.offset + (k * 7919) % shape_numel(e.shape);
          REQUIRE(i < P);
          const float saved = w[i];
          const float h = 1e-2f;
          w[i] = saved + h;
          const double up = model.forward_loss(batch).loss_sum;
          w[i] = saved - h;
          const double down = model.forward_loss(batch).loss_sum;
          w[i] = saved;
          const double numeric = (up - down) / (2 * h);
          INFO(e.name << " [" << i - e.offset << "] tied=" << tied << " lrsa=" << (mode == attn::Mode::Lrsa));
          CHECK(std::abs(grads[size_t(i)] - numeric) <= 2e-3 + 2e-2 * std::abs(numeric));
          ++checked;
        }
      }
      CHECK(checked >= 30);
    }
  }
}

TEST_CASE("LRSA with ratio 1 equals dense; packing equals separate documents", "[model]") {
  const ModelConfig c = tiny_config(Architecture::Qwen2, false);
  DecoderOptions dense_options, lrsa_options;
  lrsa_options.attention = lrsa_attention(1.0);
  Decoder dense(c, dense_options, DType::F32, Device::cpu());
  Decoder lrsa(c, lrsa_options, DType::F32, Device::cpu());
  init_params(dense.params(), c, 5, 0.1f);
  init_params(lrsa.params(), c, 5, 0.1f);
  TokenBatch batch = random_batch(c, {0, 23, 40}, 9);
  const std::vector<float> a = dense.forward_logits(batch).to_floats();
  const std::vector<float> b = lrsa.forward_logits(batch).to_floats();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(std::abs(a[i] - b[i]) < 1e-5f);

  // Logits of the second packed document equal those of that document alone.
  std::vector<int32_t> ids;
  for (int64_t v : batch.ids.to_ints()) ids.push_back(int32_t(v));
  std::vector<int32_t> second(ids.begin() + 23, ids.end());
  TokenBatch alone = TokenBatch::from_host(second, second, {0, 17}, Device::cpu());
  const std::vector<float> solo = dense.forward_logits(alone).to_floats();
  for (size_t i = 0; i < solo.size(); ++i) REQUIRE(std::abs(solo[i] - a[23 * size_t(c.vocab_size) + i]) < 1e-5f);
}

TEST_CASE("activation checkpointing gives the same loss and gradients", "[model]") {
  const ModelConfig c = tiny_config(Architecture::Llama, true);
  DecoderOptions plain, checkpointed;
  plain.attention = checkpointed.attention = lrsa_attention(0.5);
  checkpointed.checkpoint_every = 1;
  Decoder a(c, plain, DType::F32, Device::cpu());
  Decoder b(c, checkpointed, DType::F32, Device::cpu());
  init_params(a.params(), c, 2);
  init_params(b.params(), c, 2);
  TokenBatch batch = random_batch(c, {0, 33}, 4);
  const LossSums la = a.forward_backward(batch, 0.5f, ops::GradWrite::Overwrite);
  const LossSums lb = b.forward_backward(batch, 0.5f, ops::GradWrite::Overwrite);
  CHECK(la.loss_sum == lb.loss_sum);
  CHECK(a.grads().flat.to_floats() == b.grads().flat.to_floats());
}

TEST_CASE("a step's first micro-batch overwrites the gradients, later ones add to them", "[model]") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    const ModelConfig c = tiny_config(Architecture::Qwen2, tied);
    Decoder model(c, DecoderOptions{}, DType::F32, Device::cpu());
    init_params(model.params(), c, 8);
    TokenBatch batch = random_batch(c, {0, 12}, 1);
    model.forward_backward(batch, 1.0f, ops::GradWrite::Overwrite);
    const std::vector<float> once = model.grads().flat.to_floats();
    model.forward_backward(batch, 1.0f, ops::GradWrite::Accumulate);
    const std::vector<float> twice = model.grads().flat.to_floats();
    size_t off = 0;  // gradients that are not twice the first micro-batch's
    for (size_t i = 0; i < once.size(); ++i)
      off += std::abs(twice[i] - 2 * once[i]) > 1e-5f + 1e-5f * std::abs(once[i]);
    CHECK(off == 0);
    model.forward_backward(batch, 1.0f, ops::GradWrite::Overwrite);  // the next step: the same bits as the first
    CHECK(model.grads().flat.to_floats() == once);
  }
}

TEST_CASE("the decoder rejects a cuDNN gather budget outside (0, 16] GiB, naming the setting", "[model]") {
  const ModelConfig c = tiny_config(Architecture::Qwen2, false);
  DecoderOptions options;
  for (double gib : {0.0, -1.0, 16.5, std::nan("")}) {
    options.attention.cudnn_gather_gib = gib;
    CHECK_THROWS_WITH(Decoder(c, options, DType::F32, Device::cpu()),
                      Catch::StartsWith("attention.cudnn_gather_gib: must be in (0, 16], got"));
  }
  options.attention.cudnn_gather_gib = 16;
  CHECK_NOTHROW(Decoder(c, options, DType::F32, Device::cpu()));
}

TEST_CASE("memory plan counts parameters, optimizer shards and checkpointing", "[model]") {
  ModelConfig c = tiny_config(Architecture::Qwen2, false);
  DecoderOptions options;
  const MemoryPlan full = plan_memory(c, options, DType::BF16, 1024, 1);
  CHECK(full.parameters == parameter_count(c) * 2);
  CHECK(full.gradients == parameter_count(c) * 4);
  CHECK(full.optimizer == parameter_count(c) * 12);
  CHECK(plan_memory(c, options, DType::BF16, 1024, 4).optimizer == parameter_count(c) * 3);
  options.checkpoint_every = 1;
  CHECK(plan_memory(c, options, DType::BF16, 1024, 1).activations < full.activations);
}
