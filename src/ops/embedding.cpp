#include "lrsa/ops/embedding.h"

#include <algorithm>

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

void check_ids(const char* op, const Tensor& ids, int64_t vocab) {
  check_tensor(ids, op, "ids", {DType::I32});
  LRSA_CHECK(ids.dim() == 1, "{}: ids must be [N], got {}", op, ids.describe());
  if (!ids.device().is_cpu()) return;  // the CUDA kernels check the range on the device
  const int32_t* p = ids.data_as<int32_t>();
  for (int64_t n = 0; n < ids.numel(); ++n)
    LRSA_CHECK(p[n] >= 0 && p[n] < vocab, "{}: ids[{}] = {} is outside the vocabulary [0, {})", op, n, p[n], vocab);
}

template <typename T>
void forward_cpu(const int32_t* ids, const T* table, T* out, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > cpu::kParallelElements)
  for (int64_t n = 0; n < N; ++n) std::copy_n(table + int64_t(ids[n]) * C, C, out + n * C);
}

// dtable[ids[n]] += dout[n]. Threads split the columns and each walks the tokens in order, so
// repeated ids are summed in token order (deterministic, no atomics).
template <typename T>
void backward_cpu(const T* dout, const int32_t* ids, float* dtable, int64_t N, int64_t C) {
  constexpr int64_t kCols = 64;
#pragma omp parallel for if (N * C > cpu::kParallelElements)
  for (int64_t c0 = 0; c0 < C; c0 += kCols) {
    const int64_t c1 = std::min(C, c0 + kCols);
    for (int64_t n = 0; n < N; ++n) {
      float* row = dtable + int64_t(ids[n]) * C;
      for (int64_t c = c0; c < c1; ++c) row[c] += cpu::load(dout + n * C, c);
    }
  }
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  check_tensor(table, "embedding_forward", "table", {DType::F32, DType::BF16});
  LRSA_CHECK(table.dim() == 2, "embedding_forward: table must be [V, C], got {}", table.describe());
  check_same_device("embedding_forward", {&ids, &table, &out});
  check_ids("embedding_forward", ids, table.size(0));
  check_tensor(out, "embedding_forward", "out", {table.dtype()});
  check_shape(out, "embedding_forward", "out", {ids.size(0), table.size(1)});
  LRSA_DISPATCH_CUDA(table.device(), "embedding_forward", cuda::embedding_forward(ids, table, out));
  cpu::visit_float(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    forward_cpu(ids.data_as<int32_t>(), table.data_as<T>(), out.data_as<T>(), ids.size(0), table.size(1));
  });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  check_tensor(dtable, "embedding_backward", "dtable", {DType::F32});
  LRSA_CHECK(dtable.dim() == 2, "embedding_backward: dtable must be [V, C], got {}", dtable.describe());
  check_same_device("embedding_backward", {&dout, &ids, &dtable});
  check_ids("embedding_backward", ids, dtable.size(0));
  check_tensor(dout, "embedding_backward", "dout", {DType::F32, DType::BF16});
  check_shape(dout, "embedding_backward", "dout", {ids.size(0), dtable.size(1)});
  LRSA_DISPATCH_CUDA(dtable.device(), "embedding_backward", cuda::embedding_backward(dout, ids, dtable));
  cpu::visit_float(dout.dtype(), [&](auto tag) {
    using T = decltype(tag);
    backward_cpu(dout.data_as<T>(), ids.data_as<int32_t>(), dtable.data_as<float>(), ids.size(0), dtable.size(1));
  });
}

}  // namespace lrsa::ops
