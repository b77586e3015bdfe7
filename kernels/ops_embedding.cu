// Token embedding. Forward: a gather of rows in 16-byte packs. Backward, deterministic and
// equal bit for bit to the CPU's token-order sum: a stable radix sort of (id, token) pairs groups
// the tokens of each vocabulary row in token order; one block per group (and column chunk) then
// adds the group's dout rows to the f32 table row sequentially, starting from its current value.
// No atomics touch the gradient.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"
#include "ops_common.cuh"

namespace lrsa::cuda {
namespace {

template <int K, typename TO, typename TT>
__global__ void embedding_forward_kernel(const int32_t* ids, const TT* table, TO* out, int64_t packs, int64_t cols) {
  const int64_t row_packs = cols / K;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = p / row_packs, c = (p % row_packs) * K;
    float v[K];
    load_floats<K>(table + int64_t(ids[n]) * cols + c, v);
    store_floats<K>(out + p * K, v);
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = int32_t(i);
}

// Tokens of a group whose dout rows are loaded together before being added in order: frequent
// ids (a common word: thousands of tokens in a long document) would otherwise cost one
// dependent load chain per token.
constexpr int kGroupLoads = 8;

// Block (i, chunk): when sorted position i starts a group of equal ids v, dtable[v, chunk] +=
// dout[tokens of the group, chunk] in token order (the sort is stable).
template <int K, typename TD>
__global__ void embedding_backward_kernel(const int32_t* sorted_ids, const int32_t* sorted_tokens, const TD* dout,
                                          float* dtable, int64_t n, int64_t cols) {
  const int64_t i = blockIdx.x;
  const int32_t v = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == v) return;  // not the start of a group
  const int64_t c = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * K;
  if (c >= cols) return;
  float acc[K];
  float* row = dtable + int64_t(v) * cols + c;
  load_floats<K>(row, acc);
  bool more = true;
  for (int64_t j = i; more; j += kGroupLoads) {
    RawPack<K, TD> d[kGroupLoads];  // in dout's type: half the registers of fp32 for bf16
    bool in_group[kGroupLoads];
#pragma unroll
    for (int u = 0; u < kGroupLoads; ++u) {
      in_group[u] = j + u < n && sorted_ids[j + u] == v;
      if (in_group[u]) d[u].load(dout + int64_t(sorted_tokens[j + u]) * cols + c);
    }
#pragma unroll
    for (int u = 0; u < kGroupLoads; ++u) {
      if (in_group[u]) {
        float dv[K];
        d[u].floats(dv);
#pragma unroll
        for (int q = 0; q < K; ++q) acc[q] += dv[q];
      }
    }
    more = in_group[kGroupLoads - 1];
  }
  store_floats<K>(row, acc);
}

int64_t vocab_rows(const char* op, const Tensor& ids, const Tensor& table, const Tensor& rows, const char* rows_name) {
  LRSA_CHECK(table.dim() == 2 && rows.dim() == 2 && rows.size(0) == ids.numel() && rows.size(1) == table.size(1),
             "{}: shapes do not agree: ids {}, table {}, {} {}", op, ids.describe(), table.describe(), rows_name,
             rows.describe());
  return table.size(0);
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  const char* op = "embedding_forward";
  check_tensor(ids, op, "ids", {DType::I32});
  check_tensor(table, op, "table", {DType::F32, DType::BF16});
  check_tensor(out, op, "out", {DType::F32, DType::BF16});
  use_device(table);
  const int64_t vocab = vocab_rows(op, ids, table, out, "out"), cols = table.size(1), n = out.numel();
  if (n == 0) return;
  check_indices(op, "ids", ids, vocab);
  const bool vector = cols % kPack == 0 && packable(n, {table.data(), out.data()});
  dispatch_float(out.dtype(), op, [&](auto* otag) {
    using TO = std::remove_pointer_t<decltype(otag)>;
    dispatch_float(table.dtype(), op, [&](auto* ttag) {
      using TT = std::remove_pointer_t<decltype(ttag)>;
      dispatch_pack<TO, TT>(vector, [&](auto k) {
        embedding_forward_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(
            ids.data_as<int32_t>(), static_cast<const TT*>(table.data()), static_cast<TO*>(out.data()), n / k(), cols);
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  const char* op = "embedding_backward";
  check_tensor(ids, op, "ids", {DType::I32});
  check_tensor(dout, op, "dout", {DType::F32, DType::BF16});
  check_tensor(dtable, op, "dtable", {DType::F32});
  use_device(dtable);
  const int64_t vocab = vocab_rows(op, ids, dtable, dout, "dout"), cols = dtable.size(1), n = ids.numel();
  if (n == 0 || cols == 0) return;
  check_indices(op, "ids", ids, vocab);
  LRSA_CHECK(n <= INT32_MAX, "{}: {} tokens exceed the sort's 32-bit indices", op, n);
  cudaStream_t stream = current_stream();
  const Device device = ids.device();

  // Stable sort of (id, token) by id over the bits an id can use.
  int end_bit = 1;
  while (end_bit < 31 && (int64_t(1) << end_bit) < vocab) ++end_bit;
  Tensor tokens = Tensor::empty({n}, DType::I32, device);
  Tensor sorted_ids = Tensor::empty({n}, DType::I32, device);
  Tensor sorted_tokens = Tensor::empty({n}, DType::I32, device);
  iota_kernel<<<grid_size(n, 256), 256, 0, stream>>>(tokens.data_as<int32_t>(), n);
  LRSA_CUDA_CHECK_LAUNCH(op);
  size_t temp_bytes = 0;
  LRSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids.data_as<int32_t>(),
                                                  sorted_ids.data_as<int32_t>(), tokens.data_as<int32_t>(),
                                                  sorted_tokens.data_as<int32_t>(), n, 0, end_bit, stream));
  Tensor temp = Tensor::empty({int64_t(temp_bytes)}, DType::U8, device);
  LRSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, ids.data_as<int32_t>(),
                                                  sorted_ids.data_as<int32_t>(), tokens.data_as<int32_t>(),
                                                  sorted_tokens.data_as<int32_t>(), n, 0, end_bit, stream));

  const bool vector = cols % kPack == 0 && aligned16(dout.data()) && aligned16(dtable.data());
  const int threads = 128;
  dispatch_float(dout.dtype(), op, [&](auto* tag) {
    using TD = std::remove_pointer_t<decltype(tag)>;
    dispatch_pack<float, TD>(vector, [&](auto k) {
      const int64_t chunk = int64_t(threads) * k();
      const dim3 grid{unsigned(n), unsigned((cols + chunk - 1) / chunk)};
      embedding_backward_kernel<k()><<<grid, threads, 0, stream>>>(sorted_ids.data_as<int32_t>(),
                                                                   sorted_tokens.data_as<int32_t>(),
                                                                   static_cast<const TD*>(dout.data()),
                                                                   dtable.data_as<float>(), n, cols);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace lrsa::cuda
