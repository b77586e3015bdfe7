#pragma once
// Counter-based RNG: Philox4x32-10 (Salmon et al., SC'11). A (seed, stream, index) triple maps to
// the same bits on every device and thread, so initialization and dropout-style draws need no
// state beyond two integers and are reproducible across CPU and GPU and across resume.
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LRSA_HD __host__ __device__ __forceinline__
#else
#define LRSA_HD inline
#endif

namespace lrsa {

struct Philox4 {
  uint32_t v[4];
};

LRSA_HD Philox4 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits: exactly representable in f32, identical everywhere.
LRSA_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4 r = philox4x32_10(index, stream, seed);
  return float(r.v[0] >> 8) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller in f64 (so host libm and CUDA agree after rounding to f32).
LRSA_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4 r = philox4x32_10(index, stream, seed);
  uint64_t a = (uint64_t(r.v[0]) << 21) ^ r.v[1];
  uint64_t b = (uint64_t(r.v[2]) << 21) ^ r.v[3];
  double u1 = (double(a & ((uint64_t(1) << 53) - 1)) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
  double u2 = double(b & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);          // [0, 1)
  return float(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

}  // namespace lrsa
