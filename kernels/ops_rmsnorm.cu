// RMSNorm forward and backward, fused. A row is owned by one warp (rows of up to 32 * 8 packs:
// no block barrier per row) or, for longer rows, by one block of 128 threads (256 beyond 2048
// packs); grid-stride over rows either way. Few threads per row with several packs each keep
// many rows' loads in flight per SM, which is what a memory-bound row kernel needs.
// Each thread keeps its P packs of K columns of the row in registers, so x (and dy) are read from
// memory once; the row statistic is a warp or block reduction. The weight gradient is summed per
// thread over all rows its warp/block visits (in shared memory), merged per block in a fixed
// warp order, written as per-block fp32 partials and added up in a fixed order by
// sum_partials_into: deterministic, no atomics.
#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"
#include "ops_common.cuh"

namespace lrsa::cuda {
namespace {

// Who owns which row. kWarpRows: warp w of block b starts at row b * warps + w; otherwise block b
// starts at row b. `lane` indexes the row's threads, `width` counts them.
template <bool kWarpRows>
struct RowMap {
  __device__ static int64_t first() {
    return kWarpRows ? int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32 : int64_t(blockIdx.x);
  }
  __device__ static int64_t stride() { return kWarpRows ? int64_t(gridDim.x) * (blockDim.x / 32) : int64_t(gridDim.x); }
  __device__ static int lane() { return kWarpRows ? int(threadIdx.x % 32) : int(threadIdx.x); }
  __device__ static int width() { return kWarpRows ? 32 : int(blockDim.x); }
  __device__ static float sum(float v) { return kWarpRows ? warp_sum(v) : block_sum(v); }
};

// Thread `lane` owns packs lane, lane + width, ..., lane + (P - 1) * width (K columns each).
template <int K, int P, bool kWarpRows, typename T, typename TW>
__global__ void __launch_bounds__(256)
    rmsnorm_forward_kernel(const T* x, const TW* w, T* y, float* rstd, int64_t rows, int cols, float eps) {
  using Map = RowMap<kWarpRows>;
  for (int64_t r = Map::first(); r < rows; r += Map::stride()) {
    float v[P][K];
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (Map::lane() + i * Map::width()) * K;
      if (c < cols) {
        load_floats<K>(x + r * cols + c, v[i]);
#pragma unroll
        for (int j = 0; j < K; ++j) sum_sq += v[i][j] * v[i][j];
      }
    }
    sum_sq = Map::sum(sum_sq);
    const float rs = 1.0f / sqrtf(sum_sq / float(cols) + eps);
    if (Map::lane() == 0) rstd[r] = rs;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (Map::lane() + i * Map::width()) * K;
      if (c < cols) {
        float wv[K], out[K];
        load_floats<K>(w + c, wv);
#pragma unroll
        for (int j = 0; j < K; ++j) out[j] = v[i][j] * rs * wv[j];
        store_floats<K>(y + r * cols + c, out);
      }
    }
  }
}

// What the backward keeps in registers for the whole grid-stride loop, by launch shape; the
// choices were measured (docs/benchmarks.md, "Session 13: what the RMSNorm backward keeps in
// registers"). w: read once instead of twice per row (from L1), a gain for every shape of up to
// 6 packs per thread. The weight gradient's running sums: no shared-memory add per element, at
// the cost of occupancy; a gain for the plain op of up to 4 packs per thread, a loss with the
// residual's registers too or with 6 packs. More packs would spill.
template <int P, bool kResidual>
struct BackwardRegisters {
  static constexpr bool weight = P <= 6;
  static constexpr bool dw_sums = !kResidual && P <= 4;
};

// dx = rs * (w * dy - x * rs^2 * mean(w * dy * x)) (+ residual); dw += dy * x * rs.
// Between the row's two passes x and dy (and the residual) wait in registers in their storage
// type. kResidual is a template argument so that the plain op holds no residual registers:
// registers set how many rows an SM keeps in flight. The weight gradient is summed in shared
// memory (or, for some shapes, in registers until the end: BackwardRegisters), one slice per row
// owner (warp or block); a thread's columns sit `width` floats apart there (lanes consecutive: no
// bank conflicts). So registers do not grow with the row length and wide rows keep the occupancy
// a memory-bound kernel needs. At the end the block adds its slices in warp order into
// dw_partials [gridDim.x, cols].
template <int K, int P, bool kWarpRows, bool kResidual, typename T, typename TW>
__global__ void __launch_bounds__(256)
    rmsnorm_backward_kernel(const T* dy, const T* x, const TW* w, const float* rstd, const T* residual, T* dx,
                            float* dw_partials, int64_t rows, int cols) {
  using Map = RowMap<kWarpRows>;
  extern __shared__ float dw_slices[];  // [owners][P * K * width]: slot (i * K + j) * width + lane
  const int lane = Map::lane(), width = Map::width(), slice = P * K * width;
  float* dw = dw_slices + (kWarpRows ? int(threadIdx.x / 32) : 0) * slice;
  for (int s = lane; s < slice; s += width) dw[s] = 0.0f;  // this thread's slots only
  using Registers = BackwardRegisters<P, kResidual>;
  RawPack<K, TW> w_held[P];
  float dw_held[P][K] = {};
  if constexpr (Registers::weight) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (lane + i * width) * K;
      if (c < cols) w_held[i].load(w + c);
    }
  }
  auto weights = [&](int i, int c, float(&wv)[K]) {
    if constexpr (Registers::weight) w_held[i].floats(wv);
    else load_floats<K>(w + c, wv);
  };
  for (int64_t r = Map::first(); r < rows; r += Map::stride()) {
    const float rs = rstd[r];
    RawPack<K, T> xp[P], dyp[P], resp[P];
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (lane + i * width) * K;
      if (c < cols) {
        xp[i].load(x + r * cols + c);
        dyp[i].load(dy + r * cols + c);
        if constexpr (kResidual) resp[i].load(residual + r * cols + c);
      }
    }
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (lane + i * width) * K;
      if (c < cols) {
        float xv[K], dyv[K], wv[K];
        xp[i].floats(xv);
        dyp[i].floats(dyv);
        weights(i, c, wv);
#pragma unroll
        for (int j = 0; j < K; ++j) dot += wv[j] * dyv[j] * xv[j];
      }
    }
    dot = Map::sum(dot);
    const float coef = rs * rs * dot / float(cols);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (lane + i * width) * K;
      if (c < cols) {
        float xv[K], dyv[K], wv[K], add[K] = {}, out[K];
        xp[i].floats(xv);
        dyp[i].floats(dyv);
        if constexpr (kResidual) resp[i].floats(add);
        weights(i, c, wv);
#pragma unroll
        for (int j = 0; j < K; ++j) {
          out[j] = rs * (wv[j] * dyv[j] - xv[j] * coef) + add[j];
          if constexpr (Registers::dw_sums) dw_held[i][j] += dyv[j] * xv[j] * rs;
          else dw[(i * K + j) * width + lane] += dyv[j] * xv[j] * rs;
        }
        store_floats<K>(dx + r * cols + c, out);
      }
    }
  }
  if constexpr (Registers::dw_sums) {
#pragma unroll
    for (int i = 0; i < P; ++i)
#pragma unroll
      for (int j = 0; j < K; ++j) dw[(i * K + j) * width + lane] = dw_held[i][j];
  }
  __syncthreads();
  const int owners = kWarpRows ? int(blockDim.x / 32) : 1;
  float* partial = dw_partials + int64_t(blockIdx.x) * cols;
  for (int s = int(threadIdx.x); s < slice; s += int(blockDim.x)) {
    const int slot = s / width, c = (s % width + slot / K * width) * K + slot % K;
    if (c < cols) {
      float sum = dw_slices[s];
      for (int o = 1; o < owners; ++o) sum += dw_slices[o * slice + s];
      partial[c] = sum;
    }
  }
}

// Launch shape of rows of `cols` columns: vector width K, packs per thread P, a warp or a block
// per row, threads per block.
struct RowLaunch {
  int k, passes;
  bool warp_rows;
  int threads;
};

constexpr int kMaxBlockPasses = 16;

RowLaunch row_launch(const char* op, int64_t cols, bool vector) {
  const int k = vector ? kPack : 1;
  const int64_t packs = (cols + k - 1) / k;
  int passes = 1;
  if (packs <= 32 * 8) {  // a warp per row, 8 rows per block: passes 1, 2, 4, 6 or 8
    while (int64_t(passes) * 32 < packs) passes = passes < 4 ? passes * 2 : passes + 2;
    return {k, passes, true, 256};
  }
  // A block per row: 128 threads with 4, 8 or 16 passes, or 256 threads with 16.
  LRSA_CHECK(packs <= int64_t(256) * kMaxBlockPasses, "{}: rows of {} columns are too long (at most {})", op,
             cols, int64_t(256) * kMaxBlockPasses * k);
  const int threads = packs <= int64_t(128) * kMaxBlockPasses ? 128 : 256;
  passes = 4;
  while (int64_t(passes) * threads < packs) passes *= 2;
  return {k, passes, false, threads};
}

// Calls fn(K, P, warp_rows) (as integral constants) for the launch shape.
template <typename Fn>
void dispatch_row_launch(const RowLaunch& launch, Fn&& fn) {
  dispatch_int<kPack, 1>(launch.k, "vector width", [&](auto k) {
    if (launch.warp_rows) {
      dispatch_int<1, 2, 4, 6, 8>(launch.passes, "passes", [&](auto passes) { fn(k, passes, std::true_type{}); });
    } else {
      dispatch_int<4, 8, kMaxBlockPasses>(launch.passes, "passes", [&](auto passes) { fn(k, passes, std::false_type{}); });
    }
  });
}

// Blocks for a grid-stride loop over `rows`: what is resident at once, never more than needed.
template <typename Kernel>
unsigned row_grid(Kernel kernel, const RowLaunch& launch, int64_t rows, size_t smem) {
  const int64_t rows_per_block = launch.warp_rows ? launch.threads / 32 : 1;
  return resident_grid(kernel, launch.threads, smem, (rows + rows_per_block - 1) / rows_per_block);
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const char* op = "rmsnorm_forward";
  check_tensor(x, op, "x", {DType::F32, DType::BF16});
  check_tensor(w, op, "w", {x.dtype(), DType::F32});
  check_tensor(y, op, "y", {x.dtype()});
  check_tensor(rstd, op, "rstd", {DType::F32});
  use_device(x);
  const int64_t cols = w.numel(), rows = cols > 0 ? x.numel() / cols : 0;
  LRSA_CHECK(x.dim() >= 1 && x.size(-1) == cols && y.shape() == x.shape() && rstd.numel() == rows,
             "{}: shapes do not agree: x {}, w {}, y {}, rstd {}", op, x.describe(), w.describe(), y.describe(),
             rstd.describe());
  if (rows == 0) return;
  const RowLaunch launch = row_launch(op, cols, packable(cols, {x.data(), w.data(), y.data()}));
  dispatch_float(x.dtype(), op, [&](auto* xtag) {
    using T = std::remove_pointer_t<decltype(xtag)>;
    dispatch_float(w.dtype(), op, [&](auto* wtag) {
      using TW = std::remove_pointer_t<decltype(wtag)>;
      dispatch_row_launch(launch, [&](auto k, auto passes, auto warp_rows) {
        const auto kernel = rmsnorm_forward_kernel<k(), passes(), warp_rows(), T, TW>;
        kernel<<<row_grid(kernel, launch, rows, 0), launch.threads, 0, current_stream()>>>(
            static_cast<const T*>(x.data()), static_cast<const TW*>(w.data()), static_cast<T*>(y.data()),
            rstd.data_as<float>(), rows, int(cols), eps);
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw,
                      ops::GradWrite dw_write, const Tensor& residual) {
  const char* op = "rmsnorm_backward";
  check_tensor(x, op, "x", {DType::F32, DType::BF16});
  check_tensor(dy, op, "dy", {x.dtype()});
  check_tensor(w, op, "w", {x.dtype(), DType::F32});
  check_tensor(rstd, op, "rstd", {DType::F32});
  check_tensor(dx, op, "dx", {x.dtype()});
  check_tensor(dw, op, "dw", {DType::F32});
  use_device(x);
  const int64_t cols = w.numel(), rows = cols > 0 ? x.numel() / cols : 0;
  LRSA_CHECK(x.dim() >= 1 && x.size(-1) == cols && dy.shape() == x.shape() && dx.shape() == x.shape() &&
                 rstd.numel() == rows && dw.numel() == cols,
             "{}: shapes do not agree: dy {}, x {}, w {}, rstd {}, dx {}, dw {}", op, dy.describe(), x.describe(),
             w.describe(), rstd.describe(), dx.describe(), dw.describe());
  if (rows == 0) {  // an empty sum
    if (dw_write == ops::GradWrite::Overwrite) dw.zero_();
    return;
  }
  const RowLaunch launch = row_launch(
      op, cols,
      packable(cols, {dy.data(), x.data(), w.data(), dx.data(), residual.defined() ? residual.data() : nullptr}));
  // The weight gradient's slices (see the kernel): up to 128 KiB, past the default 48 KiB limit.
  const int owners = launch.warp_rows ? launch.threads / 32 : 1;
  const size_t smem = size_t(owners) * launch.passes * launch.k * (launch.warp_rows ? 32 : launch.threads) * sizeof(float);
  Tensor partials;
  dispatch_float(x.dtype(), op, [&](auto* xtag) {
    using T = std::remove_pointer_t<decltype(xtag)>;
    dispatch_float(w.dtype(), op, [&](auto* wtag) {
      using TW = std::remove_pointer_t<decltype(wtag)>;
      dispatch_row_launch(launch, [&](auto k, auto passes, auto warp_rows) {
        auto run = [&](auto with_residual) {
          const auto kernel = rmsnorm_backward_kernel<k(), passes(), warp_rows(), with_residual(), T, TW>;
          LRSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
          const unsigned grid = row_grid(kernel, launch, rows, smem);
          partials = Tensor::empty({int64_t(grid), cols}, DType::F32, x.device());
          kernel<<<grid, launch.threads, smem, current_stream()>>>(
              static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()), static_cast<const TW*>(w.data()),
              rstd.data_as<float>(), residual.defined() ? static_cast<const T*>(residual.data()) : nullptr,
              static_cast<T*>(dx.data()), partials.data_as<float>(), rows, int(cols));
        };
        if (residual.defined()) run(std::true_type{});
        else run(std::false_type{});
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
  sum_partials_into(partials, dw, dw_write);
}

}  // namespace lrsa::cuda
