// Multi-tensor AdamW, the global gradient norm and device sums.
//
// A list of tensors reaches the device as kernel parameters: batches of up to kSlotsPerLaunch
// slots (pointers, size and the global index of the tensor's first chunk of kChunk elements); a
// block finds the slot of its chunk by binary search. A parameter list is thus one launch per
// dtype group and 64 tensors, with no table to upload and no host synchronization.
// Reductions are two-stage and deterministic: one fp32 partial per chunk (fixed thread order and
// block tree), then one block adds the partials in a fixed order in fp64.
#include <cmath>
#include <map>
#include <tuple>

#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"

namespace lrsa::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;  // elements per chunk: 16 to 8 packs per thread

struct Slot {
  const void* grad;  // also the input of the sums
  float* master;
  float* m;
  float* v;
  void* param;  // null: no working copy
  int64_t n;
  int64_t first_chunk;
};

// 64 slots of 56 bytes: the batch stays under the classic 4 KiB kernel-parameter limit.
constexpr int kSlotsPerLaunch = 64;

struct SlotBatch {
  Slot slots[kSlotsPerLaunch];
  int count;
  int64_t first_chunk, chunks;  // global index of slots[0]'s first chunk; chunks in the batch
};

// Batches of the slots with their chunks numbered globally from *next_chunk on.
std::vector<SlotBatch> make_batches(const std::vector<Slot>& slots, int64_t* next_chunk) {
  std::vector<SlotBatch> batches;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (i % kSlotsPerLaunch == 0) {
      batches.push_back(SlotBatch{});
      batches.back().first_chunk = *next_chunk;
    }
    SlotBatch& b = batches.back();
    Slot& s = b.slots[b.count++];
    s = slots[i];
    s.first_chunk = *next_chunk;
    const int64_t chunks = (s.n + kChunk - 1) / kChunk;
    *next_chunk += chunks;
    b.chunks += chunks;
  }
  return batches;
}

// The slot holding global chunk ci (slots sorted by first_chunk, none empty).
__device__ __forceinline__ const Slot& find_slot(const Slot* slots, int count, int64_t ci) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (slots[mid].first_chunk <= ci) lo = mid;
    else hi = mid - 1;
  }
  return slots[lo];
}

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2, grad_scale;
};

struct NoParam {};

// Same arithmetic, in the same order, as the CPU implementation (src/ops/optimizer.cpp).
template <int K, typename TG, typename TP>
__global__ void __launch_bounds__(kThreads) adamw_kernel(const __grid_constant__ SlotBatch batch, AdamWArgs a) {
  for (int64_t ci = batch.first_chunk + blockIdx.x; ci < batch.first_chunk + batch.chunks; ci += gridDim.x) {
    const Slot& s = find_slot(batch.slots, batch.count, ci);
    const int64_t begin = (ci - s.first_chunk) * kChunk, end = min(s.n, begin + kChunk);
    for (int64_t i = begin + int64_t(threadIdx.x) * K; i < end; i += int64_t(blockDim.x) * K) {
      float g[K], m[K], v[K], w[K];
      load_floats<K>(static_cast<const TG*>(s.grad) + i, g);
      load_floats<K>(s.m + i, m);
      load_floats<K>(s.v + i, v);
      load_floats<K>(s.master + i, w);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float gs = g[j] * a.grad_scale;
        m[j] = a.beta1 * m[j] + (1.0f - a.beta1) * gs;
        v[j] = a.beta2 * v[j] + (1.0f - a.beta2) * gs * gs;
        const float m_hat = m[j] / a.bias_correction1, v_hat = v[j] / a.bias_correction2;
        w[j] -= a.lr * (m_hat / (sqrtf(v_hat) + a.eps) + a.weight_decay * w[j]);
      }
      store_floats<K>(s.m + i, m);
      store_floats<K>(s.v + i, v);
      store_floats<K>(s.master + i, w);
      if constexpr (!std::is_same_v<TP, NoParam>) store_floats<K>(static_cast<TP*>(s.param) + i, w);
    }
  }
}

// partials[ci] = sum over chunk ci of x (kSquare: x^2), fp32.
template <int K, bool kSquare, typename T>
__global__ void __launch_bounds__(kThreads) chunk_sums_kernel(const __grid_constant__ SlotBatch batch, float* partials) {
  for (int64_t ci = batch.first_chunk + blockIdx.x; ci < batch.first_chunk + batch.chunks; ci += gridDim.x) {
    const Slot& s = find_slot(batch.slots, batch.count, ci);
    const int64_t begin = (ci - s.first_chunk) * kChunk, end = min(s.n, begin + kChunk);
    float acc = 0.0f;
    for (int64_t i = begin + int64_t(threadIdx.x) * K; i < end; i += int64_t(blockDim.x) * K) {
      float x[K];
      load_floats<K>(static_cast<const T*>(s.grad) + i, x);
#pragma unroll
      for (int j = 0; j < K; ++j) acc += kSquare ? x[j] * x[j] : x[j];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[ci] = acc;
  }
}

// out[0] = sum of partials[0 .. n) in fp64: a fixed strided split over the threads, then a fixed
// tree. One block.
__global__ void __launch_bounds__(1024) sum_partials_kernel(const float* partials, int64_t n, double* out) {
  __shared__ double shared[1024];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += double(partials[i]);
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int width = int(blockDim.x) / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = shared[0];
}

// Tensors grouped by everything that selects a kernel instantiation: grad dtype, param dtype
// (-1: none) and whether every pointer and size allows 16-byte packs.
using GroupKey = std::tuple<int, int, bool>;

bool slot_packable(const Slot& s) {
  return packable(s.n, {s.grad, s.master, s.m, s.v, s.param == nullptr ? s.grad : s.param});
}

unsigned chunk_grid(int64_t chunks) {
  const int64_t resident = int64_t(multiprocessor_count()) * (2048 / kThreads);
  return unsigned(chunks < resident ? chunks : resident);
}

// Sum (kSquare: sum of squares) of every element of the tensors, deterministic, in fp64 at the end.
template <bool kSquare>
double device_sum(const char* op, const std::vector<Tensor>& tensors) {
  std::map<GroupKey, std::vector<Slot>> groups;
  Device device = Device::cpu();
  for (const Tensor& t : tensors) {
    check_tensor(t, op, "tensor", {DType::F32, DType::BF16});
    if (t.numel() == 0) continue;
    device = t.device();
    Slot s{t.data(), nullptr, nullptr, nullptr, nullptr, t.numel(), 0};
    groups[{int(t.dtype()), -1, slot_packable(s)}].push_back(s);
  }
  if (groups.empty()) return 0.0;
  use_device(tensors.front());
  std::vector<std::pair<GroupKey, std::vector<SlotBatch>>> launches;
  int64_t chunks = 0;
  for (const auto& [key, slots] : groups) launches.emplace_back(key, make_batches(slots, &chunks));
  Tensor partials = Tensor::empty({chunks}, DType::F32, device);
  for (const auto& [key, batches] : launches) {
    const bool vector = std::get<2>(key);
    dispatch_float(DType(std::get<0>(key)), op, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      dispatch_pack<T>(vector, [&](auto k) {
        for (const SlotBatch& batch : batches)
          chunk_sums_kernel<k(), kSquare, T><<<chunk_grid(batch.chunks), kThreads, 0, current_stream()>>>(
              batch, partials.data_as<float>());
      });
    });
    LRSA_CUDA_CHECK_LAUNCH(op);
  }
  Tensor total = Tensor::empty({1}, DType::I64, device);  // 8 bytes holding one double
  sum_partials_kernel<<<1, 1024, 0, current_stream()>>>(partials.data_as<float>(), chunks,
                                                         static_cast<double*>(total.data()));
  LRSA_CUDA_CHECK_LAUNCH(op);
  double result = 0.0;
  memcpy_bytes(&result, Device::cpu(), total.data(), device, sizeof(double));  // waits for the stream
  return result;
}

}  // namespace

void adamw_step(const std::vector<ops::AdamWTensors>& tensors, const ops::AdamWConfig& config, float grad_scale) {
  const char* op = "adamw_step";
  std::map<GroupKey, std::vector<Slot>> groups;
  for (const ops::AdamWTensors& t : tensors) {
    check_tensor(t.master, op, "master", {DType::F32});
    check_tensor(t.m, op, "m", {DType::F32});
    check_tensor(t.v, op, "v", {DType::F32});
    check_tensor(t.grad, op, "grad", {DType::F32, DType::BF16});
    if (t.param.defined()) check_tensor(t.param, op, "param", {DType::F32, DType::BF16});
    const int64_t n = t.master.numel();
    LRSA_CHECK(t.m.numel() == n && t.v.numel() == n && t.grad.numel() == n && (!t.param.defined() || t.param.numel() == n),
               "{}: sizes differ: master {}, m {}, v {}, grad {}, param {}", op, t.master.describe(), t.m.describe(),
               t.v.describe(), t.grad.describe(), t.param.describe());
    if (n == 0) continue;
    Slot s{t.grad.data(), t.master.data_as<float>(), t.m.data_as<float>(), t.v.data_as<float>(),
           t.param.defined() ? t.param.data() : nullptr, n, 0};
    groups[{int(t.grad.dtype()), t.param.defined() ? int(t.param.dtype()) : -1, slot_packable(s)}].push_back(s);
  }
  if (groups.empty()) return;
  use_device(tensors.front().master);
  AdamWArgs args{};
  args.lr = config.lr;
  args.beta1 = config.beta1;
  args.beta2 = config.beta2;
  args.eps = config.eps;
  args.weight_decay = config.weight_decay;
  args.bias_correction1 = float(1.0 - std::pow(double(config.beta1), double(config.step)));
  args.bias_correction2 = float(1.0 - std::pow(double(config.beta2), double(config.step)));
  args.grad_scale = grad_scale;
  int64_t chunks = 0;  // numbering only: AdamW keeps no per-chunk results
  for (const auto& [key, slots] : groups) {
    const std::vector<SlotBatch> batches = make_batches(slots, &chunks);
    const auto [grad_dtype, param_dtype, vector] = key;
    dispatch_float(DType(grad_dtype), op, [&](auto* gtag) {
      using TG = std::remove_pointer_t<decltype(gtag)>;
      auto launch = [&](auto* ptag) {
        using TP = std::remove_pointer_t<decltype(ptag)>;
        dispatch_pack<TG, float, TP>(vector, [&](auto k) {
          for (const SlotBatch& batch : batches)
            adamw_kernel<k(), TG, TP><<<chunk_grid(batch.chunks), kThreads, 0, current_stream()>>>(batch, args);
        });
      };
      if (param_dtype < 0) launch(static_cast<NoParam*>(nullptr));
      else dispatch_float(DType(param_dtype), op, launch);
    });
    LRSA_CUDA_CHECK_LAUNCH(op);
  }
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  return std::sqrt(device_sum<true>("global_grad_norm", grads));
}

double sum_to_host(const Tensor& x) { return device_sum<false>("sum_to_host", {x}); }

}  // namespace lrsa::cuda
