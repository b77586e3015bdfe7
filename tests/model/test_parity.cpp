// The decoder against transformers: tiny random Qwen2 and Llama-3 models whose logits, loss and
// gradients were computed by transformers in fp32 (scripts/fixtures/make_model_fixtures.py).
#include <catch2/catch.hpp>

#include <limits>

#include "lrsa/model/decoder.h"
#include "lrsa/model/safetensors.h"
#include "support/compare.h"

using namespace lrsa;
using namespace lrsa::model;

namespace {

std::vector<double> doubles(const Tensor& t) { return t.to_doubles(); }

void check_parity(const std::string& name, Device device, DType dtype) {
  const std::string dir = std::string(LRSA_SOURCE_DIR) + "/tests/model/fixtures/" + name;
  const ModelConfig config = load_model_config(dir);
  const TensorMap reference = read_safetensors(dir + "/reference.safetensors").tensors;
  const TensorMap hf_grads = read_safetensors(dir + "/grads.safetensors").tensors;

  Decoder model(config, DecoderOptions{}, dtype, device);
  load_hf_weights(model.params(), config, load_safetensors_checkpoint(dir), dir);

  std::vector<int32_t> ids, labels;
  for (int64_t v : reference.at("input_ids").to_ints()) ids.push_back(int32_t(v));
  for (int64_t v : reference.at("labels").to_ints()) labels.push_back(int32_t(v));
  const int64_t T = int64_t(ids.size());
  TokenBatch batch = TokenBatch::from_host(ids, labels, {0, T}, device);
  REQUIRE(batch.targets.to_ints() == reference.at("targets").view({T}).to_ints());

  const std::vector<double> logits = doubles(model.forward_logits(batch));
  const std::vector<double> ref_logits = doubles(reference.at("logits"));
  const double tol = dtype == DType::F32 ? 1e-5 : 2e-2;
  INFO(name << " on " << device.str() << " " << dtype_name(dtype));
  CHECK(test::rel_l2(logits, ref_logits) < tol);

  // The gradients start as NaN: the overwriting backward must write every one without reading it.
  model.grads().flat.fill_(std::numeric_limits<double>::quiet_NaN());
  const LossSums loss = model.forward_backward(batch, 1.0f / float(batch.trained_tokens), ops::GradWrite::Overwrite);
  const double mean_loss = loss.loss_sum / double(loss.tokens);
  CHECK(std::abs(mean_loss - reference.at("loss").item()) < (dtype == DType::F32 ? 1e-5 : 1e-2));

  const TensorMap ours = hf_views(model.grads(), config);
  for (const auto& [hf_name, hf_grad] : hf_grads) {
    INFO(hf_name);
    REQUIRE(ours.count(hf_name) == 1);
    CHECK(test::rel_l2(doubles(ours.at(hf_name)), doubles(hf_grad)) < (dtype == DType::F32 ? 1e-4 : 5e-2));
  }
}

}  // namespace

TEST_CASE("decoder matches transformers in fp32 on the CPU", "[model]") {
  check_parity("qwen2_tiny", Device::cpu(), DType::F32);
  check_parity("llama3_tiny", Device::cpu(), DType::F32);
}

TEST_CASE("decoder matches transformers in bf16 on CUDA", "[model][cuda]") {
  check_parity("qwen2_tiny", Device::cuda(0), DType::BF16);
  check_parity("llama3_tiny", Device::cuda(0), DType::BF16);
}
