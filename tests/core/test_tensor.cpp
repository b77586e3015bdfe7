#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>

#include "lrsa/core/rng.h"
#include "lrsa/core/tensor.h"
#ifdef LRSA_WITH_CUDA
#include "lrsa/core/cuda_backend.h"
#endif

using namespace lrsa;

TEST_CASE("dtype conversions round to nearest even and keep specials", "[core]") {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1.0).
  CHECK(round_bf16(1.0f + 1.0f / 256) == 1.0f);
  CHECK(round_bf16(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256);
  CHECK(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isinf(round_bf16(std::numeric_limits<float>::infinity())));
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    CHECK(f16_to_float(float_to_f16(v)) == v);
  CHECK(std::isinf(f16_to_float(float_to_f16(70000.0f))));
  CHECK(f16_to_float(float_to_f16(1.0f + 1.0f / 4096)) == 1.0f);  // halfway: ties to even
  CHECK(dtype_from_name("bfloat16") == DType::BF16);
  CHECK_THROWS_WITH(dtype_from_name("f8"), Catch::Contains("unknown dtype 'f8'"));
}

TEST_CASE("views share storage and follow strides", "[core]") {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[size_t(i)] = float(i);
  Tensor t = Tensor::from_floats(v, {2, 3, 4});
  CHECK(t.is_contiguous());
  CHECK(t.strides() == Shape{12, 4, 1});

  Tensor s = t.slice(2, 1, 3);  // [2, 3, 2]
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK_FALSE(s.is_contiguous());
  CHECK(s.to_floats() == std::vector<float>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22});

  Tensor p = t.permute({2, 0, 1});  // [4, 2, 3]
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.to_floats()[0] == 0.0f);
  CHECK(p.to_floats()[1] == 4.0f);
  CHECK(p.to_floats()[6] == 1.0f);
  Tensor pc = p.contiguous();
  CHECK(pc.is_contiguous());
  CHECK(pc.to_floats() == p.to_floats());

  Tensor row = t.select(0, 1).select(0, 2);  // t[1, 2, :]
  CHECK(row.to_floats() == std::vector<float>{20, 21, 22, 23});

  // Writing through a view changes the base.
  s.fill_(-1.0);
  CHECK(t.to_floats()[1] == -1.0f);
  CHECK(t.to_floats()[3] == 3.0f);

  CHECK(t.view({6, -1}).shape() == Shape{6, 4});
  CHECK_THROWS_WITH(s.view({12}), Catch::Contains("not contiguous"));
  CHECK(s.reshape({12}).shape() == Shape{12});
  CHECK_THROWS_WITH(t.view({5, -1}), Catch::Contains("cannot infer"));
  CHECK_THROWS_WITH(t.slice(1, 2, 4), Catch::Contains("out of range"));
  CHECK(t.transpose(0, 2).shape() == Shape{4, 3, 2});
  CHECK(t.slice(1, 1, 1).is_contiguous());  // empty views are contiguous
  CHECK(Tensor::empty({3, 0}, DType::F32).transpose(0, 1).is_contiguous());
  CHECK(t.unsqueeze(1).shape() == Shape{2, 1, 3, 4});

  // A [2, 12] buffer sliced to its last 8 columns and unflattened to [2, 2, 4] heads.
  Tensor fused = Tensor::from_floats(v, {2, 12});
  Tensor heads = fused.slice(1, 4, 12).unflatten(1, {2, -1});
  CHECK(heads.shape() == Shape{2, 2, 4});
  CHECK(heads.strides() == Shape{12, 4, 1});
  CHECK(heads.select(0, 1).select(0, 1).to_floats() == std::vector<float>{20, 21, 22, 23});
  CHECK_THROWS_WITH(fused.unflatten(1, {5, -1}), Catch::Contains("cannot infer"));
}

TEST_CASE("copies convert between dtypes and into strided destinations", "[core]") {
  Tensor a = Tensor::from_floats({1.5f, -2.25f, 3.0f, 1e-3f}, {2, 2});
  Tensor b = a.to(DType::BF16);
  CHECK(b.dtype() == DType::BF16);
  CHECK(b.to_floats()[1] == -2.25f);
  CHECK(b.to_floats()[3] == round_bf16(1e-3f));
  Tensor i = a.to(DType::I32);
  CHECK(i.to_ints() == std::vector<int64_t>{1, -2, 3, 0});

  Tensor big = Tensor::from_ints({int64_t(1) << 40, -7}, {2}, DType::I64);
  CHECK(big.to(DType::I64).to_ints()[0] == (int64_t(1) << 40));

  Tensor dst = Tensor::zeros({2, 2}, DType::F16);
  dst.transpose(0, 1).copy_(a);  // dst = a^T
  CHECK(dst.to_floats() == std::vector<float>{1.5f, 3.0f, -2.25f, f16_to_float(float_to_f16(1e-3f))});
  CHECK_THROWS_WITH(dst.copy_(Tensor::zeros({4}, DType::F32)), Catch::Contains("shape mismatch"));
}

TEST_CASE("memory accounting tracks current and peak bytes", "[core]") {
  Allocator& cpu = allocator_for(Device::cpu());
  cpu.reset_peak();
  const int64_t before = cpu.stats().current_bytes;
  {
    Tensor x = Tensor::empty({1024, 256}, DType::F32);
    CHECK(cpu.stats().current_bytes == before + 1024 * 256 * 4);
    Tensor view = x.slice(0, 0, 10);  // views allocate nothing
    CHECK(cpu.stats().current_bytes == before + 1024 * 256 * 4);
  }
  CHECK(cpu.stats().current_bytes == before);
  CHECK(cpu.stats().peak_bytes >= before + 1024 * 256 * 4);
  cpu.reset_peak();
  CHECK(cpu.stats().peak_bytes == before);
}

TEST_CASE("Philox matches the Random123 known-answer vectors and is reproducible", "[core]") {
  // Known-answer tests of Philox4x32-10 from Random123 (kat_vectors).
  Philox4 zero = philox4x32_10(0, 0, 0);
  CHECK(zero.v[0] == 0x6627e8d5u);
  CHECK(zero.v[1] == 0xe169c58du);
  CHECK(zero.v[2] == 0xbc57ac4cu);
  CHECK(zero.v[3] == 0x9b00dbd8u);
  Philox4 ones = philox4x32_10(~uint64_t(0), ~uint64_t(0), ~uint64_t(0));
  CHECK(ones.v[0] == 0x408f276du);
  CHECK(ones.v[1] == 0x41c83b0eu);
  CHECK(ones.v[2] == 0xa20bc7c6u);
  CHECK(ones.v[3] == 0x6d5451fdu);

  Tensor a = Tensor::normal({4096}, 42, 7, 0.0f, 1.0f);
  Tensor b = Tensor::normal({4096}, 42, 7, 0.0f, 1.0f);
  Tensor c = Tensor::normal({4096}, 42, 8, 0.0f, 1.0f);
  CHECK(a.to_floats() == b.to_floats());
  CHECK(a.to_floats() != c.to_floats());
  double mean = 0, var = 0;
  for (float x : a.to_floats()) mean += x;
  mean /= 4096;
  for (float x : a.to_floats()) var += (x - mean) * (x - mean);
  var /= 4095;
  CHECK(std::abs(mean) < 0.05);
  CHECK(std::abs(var - 1.0) < 0.08);
  Tensor u = Tensor::uniform({1000}, 1, 0, -2.0f, 3.0f);
  for (float x : u.to_floats()) REQUIRE((x >= -2.0f && x < 3.0f));
}

TEST_CASE("errors carry context", "[core]") {
  Tensor x = Tensor::zeros({3, 5}, DType::BF16);
  CHECK_THROWS_WITH(check_tensor(x, "myop", "x", {DType::F32}), Catch::Contains("myop: x must be f32, got bf16[3, 5] cpu"));
  CHECK_THROWS_WITH(check_tensor(x.transpose(0, 1), "myop", "x", {}), Catch::Contains("must be contiguous"));
  CHECK_THROWS_WITH(parse_device("gpu"), Catch::Contains("unknown device 'gpu'"));
  CHECK(parse_device("cuda:3") == Device::cuda(3));
}

TEST_CASE("CUDA tensors: copies, fills and Philox draws equal the CPU", "[core][cuda]") {
  const Device gpu = Device::cuda(0);
  Tensor host = Tensor::normal({3, 1000}, 5, 1, 0.0f, 1.0f);
  Tensor dev = Tensor::normal({3, 1000}, 5, 1, 0.0f, 1.0f, DType::F32, gpu);
  CHECK(dev.to_floats() == host.to_floats());
  CHECK(Tensor::uniform({5000}, 9, 2, 0.f, 1.f, DType::F32, gpu).to_floats() ==
        Tensor::uniform({5000}, 9, 2, 0.f, 1.f).to_floats());
  Tensor bf = dev.to(DType::BF16);
  CHECK(bf.to_floats() == host.to(DType::BF16).to_floats());
  Tensor t = dev.transpose(0, 1).contiguous();
  CHECK(t.to_floats() == host.transpose(0, 1).contiguous().to_floats());
  Tensor z = Tensor::zeros({7, 9}, DType::BF16, gpu);
  z.slice(1, 2, 5).fill_(3.0);
  std::vector<float> zf = z.to_floats();
  CHECK(zf[2] == 3.0f);
  CHECK(zf[5] == 0.0f);
  const int64_t before = memory_stats(gpu).current_bytes;
  { Tensor big = Tensor::empty({1 << 20}, DType::F32, gpu); CHECK(memory_stats(gpu).current_bytes >= before + (4 << 20)); }
  CHECK(memory_stats(gpu).current_bytes == before);
}

#ifdef LRSA_WITH_CUDA
TEST_CASE("a CUDA graph's memory pool keeps its blocks from other tensors until the graph goes", "[core][cuda]") {
  const Device gpu = Device::cuda(0);
  const int64_t n = 12345;        // floats: a size no other test here allocates
  const int64_t block = 49664;    // n * 4 bytes rounded up to the allocator's 512
  void* freed = nullptr;
  { freed = Tensor::empty({n}, DType::F32, gpu).data(); }
  CHECK(Tensor::empty({n}, DType::F32, gpu).data() == freed);  // outside a pool a freed block comes back at once

  const int64_t before = memory_stats(gpu).current_bytes;
  void* scratch = nullptr;
  auto graph = std::make_unique<cuda::Graph>(gpu, [&] {
    Tensor t = Tensor::empty({n}, DType::F32, gpu);  // freed inside the capture, written by every replay
    t.fill_(1.0);
    scratch = t.data();
  });
  graph->launch();
  CHECK(memory_stats(gpu).current_bytes == before + block);  // held by the graph
  Tensor other = Tensor::empty({n}, DType::F32, gpu);
  CHECK(other.data() != scratch);
  graph->launch();
  cuda::synchronize();
  graph.reset();
  CHECK(memory_stats(gpu).current_bytes == before + block);  // `other` only
  CHECK(Tensor::empty({n}, DType::F32, gpu).data() == scratch);  // back in the free lists
}
#endif
