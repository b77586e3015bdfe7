// RMSNorm forward and backward, fused. A row is owned by a group of 16 or 32 lanes of a warp
// (rows of up to 32 * 8 packs: no block barrier per row) or, for longer rows, by one block of
// 64 to 256 threads; grid-stride over rows either way. Few threads per row with several packs
// each keep many rows' loads in flight per SM, which is what a memory-bound row kernel needs;
// the shape is chosen so that the row's packs fill every lane (row_launch).
// Each thread keeps its P packs of K columns of the row in registers, so x (and dy) are read from
// memory once; the row statistic is a warp or block reduction. The weight gradient is summed per
// thread over all rows its warp/block visits (in shared memory), merged per block in a fixed
// warp order, written as per-block fp32 partials and added up in a fixed order by
// sum_partials_into: deterministic, no atomics.
#include <span>
#include <utility>

#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"
#include "ops_common.cuh"

namespace lrsa::cuda {
namespace {

// Who owns which row. kLanes 16 or 32: lane group g (threadIdx.x / kLanes) of block b starts at
// row b * groups + g; kLanes 0: block b starts at row b. `lane` indexes the row's threads, `width`
// counts them, `owner` numbers the row owners of a block.
template <int kLanes>
struct RowMap {
  static constexpr bool kGroups = kLanes > 0;
  __device__ static int64_t first() {
    return kGroups ? int64_t(blockIdx.x) * (blockDim.x / kLanes) + threadIdx.x / kLanes : int64_t(blockIdx.x);
  }
  __device__ static int64_t stride() { return kGroups ? int64_t(gridDim.x) * (blockDim.x / kLanes) : int64_t(gridDim.x); }
  __device__ static int lane() { return kGroups ? int(threadIdx.x % kLanes) : int(threadIdx.x); }
  __device__ static int width() { return kGroups ? kLanes : int(blockDim.x); }
  __device__ static int owner() { return kGroups ? int(threadIdx.x / kLanes) : 0; }
  __device__ static int owners() { return kGroups ? int(blockDim.x / kLanes) : 1; }
  // The two halves of a warp may own rows of different loops' lengths: shuffle within the group.
  __device__ static float sum(float v) {
    if constexpr (!kGroups) {
      return block_sum(v);
    } else {
      const unsigned mask = kLanes == 32 ? 0xffffffffu : ((1u << kLanes) - 1) << (threadIdx.x % 32 / kLanes * kLanes);
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset);
      return v;
    }
  }
};

// Thread `lane` owns packs lane, lane + width, ..., lane + (P - 1) * width (K columns each).
template <int K, int P, int kLanes, typename T, typename TW>
__global__ void __launch_bounds__(256)
    rmsnorm_forward_kernel(const T* x, const TW* w, T* y, float* rstd, int64_t rows, int cols, float eps) {
  using Map = RowMap<kLanes>;
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

// dx = rs * (w * dy - x * rs^2 * mean(w * dy * x)) (+ residual); dw += dy * x * rs.
// Between the row's two passes x and dy wait in registers in their storage type. The weight
// gradient is summed in shared memory, one slice per row owner; slot (i * K + j) of all owners
// of a block lies side by side, lanes consecutive, so a warp's accesses never conflict on a bank.
// So registers do not grow with the row length and wide rows keep the occupancy a memory-bound
// kernel needs. At the end the block adds its owners' slices in order into dw_partials
// [gridDim.x, cols].
template <int K, int P, int kLanes, typename T, typename TW>
__global__ void __launch_bounds__(256)
    rmsnorm_backward_kernel(const T* dy, const T* x, const TW* w, const float* rstd, const T* residual, T* dx,
                            float* dw_partials, int64_t rows, int cols) {
  using Map = RowMap<kLanes>;
  extern __shared__ float dw_slices[];  // [P * K slots][owners][width]
  const int lane = Map::lane(), width = Map::width(), owners = Map::owners();
  float* dw = dw_slices + Map::owner() * width + lane;  // this thread's slot s is dw[s * owners * width]
  for (int s = 0; s < P * K; ++s) dw[s * owners * width] = 0.0f;
  for (int64_t r = Map::first(); r < rows; r += Map::stride()) {
    const float rs = rstd[r];
    RawPack<K, T> xp[P], dyp[P], resp[P];
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int c = (lane + i * width) * K;
      if (c < cols) {
        xp[i].load(x + r * cols + c);
        dyp[i].load(dy + r * cols + c);
        if (residual != nullptr) resp[i].load(residual + r * cols + c);
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
        load_floats<K>(w + c, wv);
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
        if (residual != nullptr) resp[i].floats(add);
        load_floats<K>(w + c, wv);
#pragma unroll
        for (int j = 0; j < K; ++j) {
          out[j] = rs * (wv[j] * dyv[j] - xv[j] * coef) + add[j];
          dw[(i * K + j) * owners * width] += dyv[j] * xv[j] * rs;
        }
        store_floats<K>(dx + r * cols + c, out);
      }
    }
  }
  __syncthreads();
  float* partial = dw_partials + int64_t(blockIdx.x) * cols;
  for (int s = int(threadIdx.x); s < P * K * width; s += int(blockDim.x)) {
    const int slot = s / width, l = s % width, c = (l + slot / K * width) * K + slot % K;
    if (c < cols) {
      const float* column = dw_slices + slot * owners * width + l;  // owner o at column[o * width]
      float sum = column[0];
      for (int o = 1; o < owners; ++o) sum += column[o * width];
      partial[c] = sum;
    }
  }
}

// Launch shape of rows of `cols` columns: vector width K, packs per thread P, lanes per row (16
// or 32, several rows per block of 256 threads; 0: a block of `threads` per row).
struct RowLaunch {
  int k, passes, lanes, threads;
  int64_t rows_per_block() const { return lanes > 0 ? threads / lanes : 1; }
};

// The instantiated shapes: rows of up to 32 * 8 packs go to lane groups, longer ones to blocks.
template <int... P> using Passes = std::integer_sequence<int, P...>;
using GroupPasses = Passes<1, 2, 4, 6, 7, 8>;
using BlockPasses = Passes<4, 7, 8, 16>;
constexpr int kGroupLanes[] = {32, 16}, kBlockThreads[] = {256, 128, 64};
constexpr int kMaxBlockPasses = 16;

// Of the shapes that hold the row's packs, the one that leaves the fewest lanes idle (an idle
// lane still costs its group's passes and reduction); ties go to the earlier candidate: wider
// groups and blocks, then fewer passes (fewer registers).
RowLaunch row_launch(const char* op, int64_t cols, bool vector) {
  const int k = vector ? kPack : 1;
  const int64_t packs = (cols + k - 1) / k;
  LRSA_CHECK(packs <= int64_t(256) * kMaxBlockPasses, "{}: rows of {} columns are too long (at most {})", op,
             cols, int64_t(256) * kMaxBlockPasses * k);
  RowLaunch best{k, 0, 0, 0};
  int64_t best_idle = -1;
  auto consider = [&](int lanes, int threads, int passes) {
    const int64_t idle = int64_t(lanes > 0 ? lanes : threads) * passes - packs;
    if (idle >= 0 && (best_idle < 0 || idle < best_idle)) {
      best = {k, passes, lanes, threads};
      best_idle = idle;
    }
  };
  const bool groups = packs <= 32 * 8;
  for (int width : groups ? std::span<const int>(kGroupLanes) : std::span<const int>(kBlockThreads)) {
    auto each = [&]<int... P>(Passes<P...>) {
      (consider(groups ? width : 0, groups ? 256 : width, P), ...);
    };
    if (groups) each(GroupPasses{});
    else each(BlockPasses{});
  }
  return best;
}

// Calls fn(K, P, lanes) (as integral constants) for the launch shape.
template <typename Fn>
void dispatch_row_launch(const RowLaunch& launch, Fn&& fn) {
  dispatch_int<kPack, 1>(launch.k, "vector width", [&](auto k) {
    auto with_passes = [&]<int... P>(Passes<P...>, auto lanes) {
      dispatch_int<P...>(launch.passes, "passes", [&](auto passes) { fn(k, passes, lanes); });
    };
    if (launch.lanes == 0) with_passes(BlockPasses{}, std::integral_constant<int, 0>{});
    else
      dispatch_int<32, 16>(launch.lanes, "lanes per row", [&](auto lanes) { with_passes(GroupPasses{}, lanes); });
  });
}

// Blocks for a grid-stride loop over `rows`: what is resident at once, never more than needed.
template <typename Kernel>
unsigned row_grid(Kernel kernel, const RowLaunch& launch, int64_t rows, size_t smem) {
  return resident_grid(kernel, launch.threads, smem, (rows + launch.rows_per_block() - 1) / launch.rows_per_block());
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
      dispatch_row_launch(launch, [&](auto k, auto passes, auto lanes) {
        const auto kernel = rmsnorm_forward_kernel<k(), passes(), lanes(), T, TW>;
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
  // The weight gradient's slices (see the kernel), P * K floats per thread: up to 128 KiB, past
  // the default 48 KiB limit.
  const size_t smem = size_t(launch.passes) * launch.k * launch.threads * sizeof(float);
  Tensor partials;
  dispatch_float(x.dtype(), op, [&](auto* xtag) {
    using T = std::remove_pointer_t<decltype(xtag)>;
    dispatch_float(w.dtype(), op, [&](auto* wtag) {
      using TW = std::remove_pointer_t<decltype(wtag)>;
      dispatch_row_launch(launch, [&](auto k, auto passes, auto lanes) {
        const auto kernel = rmsnorm_backward_kernel<k(), passes(), lanes(), T, TW>;
        LRSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        const unsigned grid = row_grid(kernel, launch, rows, smem);
        partials = Tensor::empty({int64_t(grid), cols}, DType::F32, x.device());
        kernel<<<grid, launch.threads, smem, current_stream()>>>(
            static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()), static_cast<const TW*>(w.data()),
            rstd.data_as<float>(), residual.defined() ? static_cast<const T*>(residual.data()) : nullptr,
            static_cast<T*>(dx.data()), partials.data_as<float>(), rows, int(cols));
      });
    });
  });
  LRSA_CUDA_CHECK_LAUNCH(op);
  sum_partials_into(partials, dw, dw_write);
}

}  // namespace lrsa::cuda
