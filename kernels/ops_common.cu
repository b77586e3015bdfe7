// Deterministic column reductions (see ops_common.cuh).
#include "cuda_common.cuh"
#include "ops_common.cuh"

namespace lrsa::cuda {
namespace {

// partials[s, c] = sum of x[r, c] over rows r in [s * rows_per, (s + 1) * rows_per). A thread
// owns K adjacent columns; gridDim.y splits the rows.
template <int K, typename T>
__global__ void column_partials_kernel(const T* x, float* partials, int64_t rows, int64_t cols, int64_t rows_per) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * K;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * rows_per, r1 = r0 + rows_per < rows ? r0 + rows_per : rows;
  float acc[K] = {};
  for (int64_t r = r0; r < r1; ++r) {
    float v[K];
    load_floats<K>(x + r * cols + c, v);
#pragma unroll
    for (int j = 0; j < K; ++j) acc[j] += v[j];
  }
  store_floats<K>(partials + blockIdx.y * cols + c, acc);
}

// bad[0] = 1 + the position of an offending element (the first to be found), bad[1] = its value.
__global__ void check_indices_kernel(const int32_t* indices, int64_t n, int64_t limit, bool has_except, int32_t except,
                                     long long* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = indices[i];
    if ((v < 0 || v >= limit) && !(has_except && v == except)) {
      if (atomicCAS(reinterpret_cast<unsigned long long*>(bad), 0ull, (unsigned long long)(i + 1)) == 0ull) bad[1] = v;
    }
  }
}

// Block of kTile x kTile threads per kTile columns: thread (x, y) sums the splits s = y, y + kTile,
// ... of column x in order, then column x's kTile sums are added in order of y. The work per
// thread is splits / kTile independent loads, not a serial walk over all splits.
constexpr int kTile = 32;

template <typename TO>
__global__ void __launch_bounds__(kTile * kTile)
    sum_partials_kernel(const float* partials, TO* out, int64_t splits, int64_t cols, bool accumulate) {
  __shared__ float sums[kTile][kTile + 1];
  const int64_t c = int64_t(blockIdx.x) * kTile + threadIdx.x;
  float acc = 0.0f;
  if (c < cols) {
#pragma unroll 4
    for (int64_t s = threadIdx.y; s < splits; s += kTile) acc += partials[s * cols + c];
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
    for (int y = 0; y < kTile; ++y) total += sums[y][threadIdx.x];
    out[c] = from_float<TO>(accumulate ? to_float(out[c]) + total : total);
  }
}

}  // namespace

void sum_partials_into(const Tensor& partials, Tensor& out, ops::GradWrite write) {
  const char* op = "sum_partials_into";
  check_tensor(partials, op, "partials", {DType::F32});
  check_tensor(out, op, "out", {DType::F32, DType::BF16});
  const int64_t cols = out.numel();
  LRSA_CHECK(partials.dim() == 2 && partials.size(1) == cols, "{}: partials {} do not match out {}", op,
             partials.describe(), out.describe());
  if (cols == 0) return;
  dispatch_float(out.dtype(), op, [&](auto* tag) {
    using TO = std::remove_pointer_t<decltype(tag)>;
    sum_partials_kernel<<<unsigned((cols + kTile - 1) / kTile), dim3{kTile, kTile}, 0, current_stream()>>>(
        partials.data_as<float>(), static_cast<TO*>(out.data()), partials.size(0), cols,
        write == ops::GradWrite::Accumulate);
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

void column_sums_into(const Tensor& x, Tensor& out, ops::GradWrite write) {
  const char* op = "column_sums_into";
  check_tensor(x, op, "x", {DType::F32, DType::BF16});
  LRSA_CHECK(x.dim() == 2 && x.size(1) == out.numel(), "{}: x {} does not match out {}", op, x.describe(),
             out.describe());
  const int64_t rows = x.size(0), cols = x.size(1);
  if (cols == 0) return;
  if (rows == 0) {  // empty sums
    if (write == ops::GradWrite::Overwrite) out.zero_();
    return;
  }
  const bool vector = cols % kPack == 0 && aligned16(x.data());
  const int k = vector ? 4 : 1, threads = 128;  // 4 = pack_of<T, float>: the partials are f32
  const int64_t col_blocks = (cols + int64_t(threads) * k - 1) / (int64_t(threads) * k);
  // About four blocks per SM in all; each split sums at least 16 rows.
  int64_t splits = (int64_t(4) * multiprocessor_count() + col_blocks - 1) / col_blocks;
  splits = std::max<int64_t>(1, std::min(splits, rows / 16));
  const int64_t rows_per = (rows + splits - 1) / splits;
  splits = (rows + rows_per - 1) / rows_per;
  Tensor partials = Tensor::empty({splits, cols}, DType::F32, x.device());
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  dispatch_float(x.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = static_cast<const T*>(x.data());
    static_assert(pack_of<T, float> == 4);
    dispatch_pack<T, float>(vector, [&](auto kk) {
      column_partials_kernel<kk()><<<grid, threads, 0, current_stream()>>>(xp, partials.data_as<float>(), rows, cols,
                                                                           rows_per);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
  sum_partials_into(partials, out, write);
}

void check_indices(const char* op, const char* name, const Tensor& indices, int64_t limit,
                   std::optional<int32_t> except) {
  check_tensor(indices, op, name, {DType::I32});
  const int64_t n = indices.numel();
  if (n == 0) return;
  Tensor bad = Tensor::zeros({2}, DType::I64, indices.device());
  check_indices_kernel<<<grid_size(n, 256), 256, 0, current_stream()>>>(
      indices.data_as<int32_t>(), n, limit, except.has_value(), except.value_or(0), static_cast<long long*>(bad.data()));
  LRSA_CUDA_CHECK_LAUNCH(op);
  const std::vector<int64_t> verdict = bad.to_ints();  // waits for the stream
  if (verdict[0] == 0) return;
  if (except.has_value())
    fail("{}: {}[{}] = {} is neither {} nor in [0, {})", op, name, verdict[0] - 1, verdict[1], *except, limit);
  fail("{}: {}[{}] = {} is outside [0, {})", op, name, verdict[0] - 1, verdict[1], limit);
}

}  // namespace lrsa::cuda
