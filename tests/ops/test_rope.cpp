#include <catch2/catch.hpp>

#include <cmath>

#include "lrsa/ops/rope.h"
#include "ops/op_test_util.h"

using namespace lrsa;
using namespace lrsa::test;

namespace {

// Rotate-half RoPE of x [T, H, D] (contiguous values) in Acc; the angle is the fp32 product the
// contract prescribes, sign = -1 rotates backwards.
template <typename Acc>
std::vector<double> rope_ref(const std::vector<double>& x, const std::vector<int64_t>& pos, const std::vector<float>& inv_freq,
                             int64_t H, int64_t D, double sign = 1.0) {
  std::vector<double> out(x.size());
  const int64_t half = D / 2, T = int64_t(pos.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(pos[size_t(t)]) * inv_freq[size_t(i)];
      const Acc c = std::cos(Acc(angle)), s = Acc(sign) * std::sin(Acc(angle));
      for (int64_t h = 0; h < H; ++h) {
        const size_t base = size_t((t * H + h) * D);
        const Acc x1 = Acc(x[base + size_t(i)]), x2 = Acc(x[base + size_t(i + half)]);
        out[base + size_t(i)] = double(x1 * c - x2 * s);
        out[base + size_t(i + half)] = double(x2 * c + x1 * s);
      }
    }
  return out;
}

// Positions of a packed batch: documents of 5, 3 and T - 8 tokens, each restarting at 0, with a
// large offset in the last one so angles wrap many times.
std::vector<int64_t> packed_positions(int64_t T) {
  std::vector<int64_t> pos;
  for (int64_t t = 0; t < T; ++t) pos.push_back(t < 5 ? t : t < 8 ? t - 5 : 4000 + (t - 8));
  return pos;
}

}  // namespace

TEST_CASE("rope_inv_freq follows transformers' fp32 formula", "[ops]") {
  for (double theta : {10000.0, 1000000.0}) {
    for (int64_t D : {2, 64, 128}) {
      const Tensor inv = ops::rope_inv_freq(D, theta);
      REQUIRE(inv.shape() == Shape{D / 2});
      REQUIRE(inv.dtype() == DType::F32);
      const auto v = inv.to_doubles();
      CHECK(v[0] == 1.0);
      for (int64_t i = 0; i < D / 2; ++i) {
        const double exact = 1.0 / std::pow(theta, double(float(2 * i) / float(D)));
        CHECK(std::abs(v[size_t(i)] - exact) <= 3e-7 * exact);  // f32 pow + reciprocal: ~2 ulp
      }
    }
  }
  CHECK_THROWS_WITH(ops::rope_inv_freq(7, 10000.0), Catch::Contains("rope_inv_freq: head_dim must be positive and even, got 7"));
  CHECK_THROWS_WITH(ops::rope_inv_freq(8, 0.0), Catch::Contains("theta must be positive"));
}

TEST_CASE("rope forward on a fused-buffer view matches fp64; backward inverts it and matches finite differences", "[ops]") {
  const int64_t T = 11, H = 3, D = 16;
  const Tensor inv_freq = ops::rope_inv_freq(D, 10000.0);
  const auto freq = inv_freq.to_floats();
  const auto pos = packed_positions(T);
  const Tensor positions = Tensor::from_ints(pos, {T});

  // q is the first H heads of a [T, 3H, D] QKV buffer: stride(0) = 3 H D.
  const Tensor qkv0 = randn({T, 3 * H, D}, 1);
  Tensor qkv = qkv0.clone();
  Tensor q = qkv.slice(1, 0, H);
  REQUIRE(q.stride(0) == 3 * H * D);
  const auto xv = q.to_doubles();
  ops::rope_forward(q, positions, inv_freq);
  check_close(q.to_doubles(), rope_ref<double>(xv, pos, freq, H, D), 2e-6);
  CHECK(qkv.slice(1, H, 3 * H).to_doubles() == qkv0.slice(1, H, 3 * H).to_doubles());  // k, v untouched

  ops::rope_backward(q, positions, inv_freq);  // rotation by -angle undoes it
  check_close(q.to_doubles(), xv, 2e-6);

  // Backward = gradient of L = <rope(x), g>.
  const Tensor g = randn({T, H, D}, 2);
  Tensor dx = g.clone();
  ops::rope_backward(dx, positions, inv_freq);
  const auto gv = g.to_doubles();
  check_close(dx.to_doubles(), finite_diff([&](const std::vector<double>& x) { return dot(rope_ref<double>(x, pos, freq, H, D), gv); }, xv), 2e-6);
}

TEST_CASE("rope bf16 follows the tolerance rule", "[ops]") {
  const int64_t T = 40, H = 4, D = 64;
  const Tensor inv_freq = ops::rope_inv_freq(D, 1000000.0);
  const auto freq = inv_freq.to_floats();
  const auto pos = packed_positions(T);
  const Tensor positions = Tensor::from_ints(pos, {T});
  Tensor x = randn({T, H, D}, 3, DType::BF16);
  const auto xv = x.to_doubles();
  ops::rope_forward(x, positions, inv_freq);
  check_rule(x.to_doubles(), round_to(rope_ref<float>(xv, pos, freq, H, D), DType::BF16), rope_ref<double>(xv, pos, freq, H, D));
  Tensor g = randn({T, H, D}, 4, DType::BF16);
  const auto gv = g.to_doubles();
  ops::rope_backward(g, positions, inv_freq);
  check_rule(g.to_doubles(), round_to(rope_ref<float>(gv, pos, freq, H, D, -1.0), DType::BF16),
             rope_ref<double>(gv, pos, freq, H, D, -1.0));
}

TEST_CASE("rope rejects bad arguments with clear errors", "[ops]") {
  const Tensor inv_freq = ops::rope_inv_freq(8, 10000.0);
  const Tensor positions = Tensor::from_ints({0, 1, 2, 3}, {4});
  Tensor x = randn({4, 2, 8}, 1);
  Tensor odd = randn({4, 2, 7}, 1);
  CHECK_THROWS_WITH(ops::rope_forward(odd, positions, inv_freq), Catch::Contains("rope_forward: x must be [T, H, D] with D even"));
  Tensor transposed = randn({4, 8, 2}, 1).transpose(1, 2);
  CHECK_THROWS_WITH(ops::rope_forward(transposed, positions, inv_freq), Catch::Contains("rope_forward: x must have contiguous [H, D] rows"));
  CHECK_THROWS_WITH(ops::rope_forward(x, Tensor::from_ints({0, 1, 2, 3}, {4}, DType::I64), inv_freq),
                    Catch::Contains("rope_forward: positions must be i32, got i64[4]"));
  CHECK_THROWS_WITH(ops::rope_backward(x, positions, ops::rope_inv_freq(4, 10000.0)),
                    Catch::Contains("rope_backward: inv_freq must have shape [4], got f32[2]"));
  CHECK_THROWS_WITH(ops::rope_forward(x, Tensor::from_ints({0, 1, 2}, {3}), inv_freq), Catch::Contains("positions must have shape [4]"));
}

TEST_CASE("rope on CUDA matches the CPU within the tolerance rule", "[ops][cuda]") {
  // {T, H, D}. D 128 and 64: the row-coalesced kernel (with 5 and 11 heads: one partial group of
  // 8, then a full one and a partial one; 40000 tokens: more rows than the grid's threads, so the
  // grid-stride loop turns); D 80: rows of 10 (bf16) or 20 (f32) 16-byte packs, which no lane
  // group covers, so the per-thread kernel with 8-byte packs; D 20: single elements.
  const int64_t shapes[][3] = {{70, 5, 128}, {70, 11, 64}, {40000, 2, 64}, {70, 5, 80}, {70, 3, 20}};
  for (const auto& [T, H, D] : shapes) {
    const auto pos = packed_positions(T);
    const Tensor positions = Tensor::from_ints(pos, {T});
    const Tensor inv_freq = ops::rope_inv_freq(D, 1000000.0);
    const auto freq = inv_freq.to_floats();
    for (DType dtype : {DType::F32, DType::BF16}) {
      for (bool inverse : {false, true}) {
        CAPTURE(T, H, D, dtype_name(dtype), inverse);
        const Tensor qkv = randn({T, 3 * H, D}, 7, dtype);
        Tensor cpu_buf = qkv.clone(), gpu_buf = qkv.to(Device::cuda(0));
        Tensor cpu_q = cpu_buf.slice(1, H, 2 * H), gpu_q = gpu_buf.slice(1, H, 2 * H);  // the k part: offset and stride
        const Tensor gpu_pos = positions.to(Device::cuda(0)), gpu_freq = inv_freq.to(Device::cuda(0));
        if (inverse) {
          ops::rope_backward(cpu_q, positions, inv_freq);
          ops::rope_backward(gpu_q, gpu_pos, gpu_freq);
        } else {
          ops::rope_forward(cpu_q, positions, inv_freq);
          ops::rope_forward(gpu_q, gpu_pos, gpu_freq);
        }
        const auto ref = rope_ref<double>(qkv.slice(1, H, 2 * H).to_doubles(), pos, freq, H, D, inverse ? -1.0 : 1.0);
        check_rule(gpu_q.to_doubles(), cpu_q.to_doubles(), ref);
        CHECK(gpu_buf.slice(1, 0, H).to_doubles() == qkv.slice(1, 0, H).to_doubles());
        CHECK(gpu_buf.slice(1, 2 * H, 3 * H).to_doubles() == qkv.slice(1, 2 * H, 3 * H).to_doubles());
      }
    }
  }
}
