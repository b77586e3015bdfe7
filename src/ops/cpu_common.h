#pragma once
// Shared pieces of the CPU op kernels: f32/bf16 load/store (all arithmetic is fp32), a dtype
// visitor that instantiates a kernel for the storage type, and OpenMP thresholds.
#include <cstdint>

#include "lrsa/core/dtype.h"
#include "lrsa/core/error.h"
#include "lrsa/core/tensor.h"

#ifdef LRSA_WITH_CUDA
#include "lrsa/ops/cuda_ops.h"
#endif

namespace lrsa::ops::cpu {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const bf16* p, int64_t i) { return bf16_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(bf16* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

// Calls fn(T{}) with T = float or bf16 for a floating storage dtype (callers validated it).
template <typename Fn>
decltype(auto) visit_float(DType dtype, Fn&& fn) {
  if (dtype == DType::BF16) return fn(bf16{});
  LRSA_CHECK(dtype == DType::F32, "internal: CPU kernel for dtype {} not instantiated", dtype_name(dtype));
  return fn(float{});
}

// Below these many elements a parallel region costs more than it saves.
constexpr int64_t kParallelElements = 1 << 15;

}  // namespace lrsa::ops::cpu
