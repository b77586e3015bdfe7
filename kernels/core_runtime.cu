// CUDA side of the core runtime: device discovery, the caching allocator, the per-thread stream,
// strided copies with dtype conversion, fill and Philox random fills.
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cuda_common.cuh"
#include "lrsa/core/rng.h"

namespace lrsa::cuda {

int device_count(std::string* reason) {
  int n = 0;
  cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess || n == 0) {
    if (reason != nullptr)
      *reason = status != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(status)
                                      : std::string("no CUDA device found");
    cudaGetLastError();  // clear the sticky error of a failed driver query
    return 0;
  }
  return n;
}

// The private pool of one CUDA graph (Graph): its blocks not held by a tensor, by rounded size.
struct GraphPool {
  std::map<size_t, std::vector<void*>> free;
};

namespace {

void set_device(int index) { LRSA_CUDA_CHECK(cudaSetDevice(index)); }

// Caching allocator: freed blocks go to a free list keyed by rounded size and are reused for the
// same rounded size. All runtime work runs on one stream per device, so a block freed by the host
// may be handed out again at once: later kernels on that stream are ordered after earlier ones.
// A graph's replays break that order (they write the blocks its capture allocated, long after the
// host freed them), hence its private pool.
class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(int index) : index_(index) {}

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t rounded = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    GraphPool* pool = capturing_ != nullptr && std::this_thread::get_id() == capturing_thread_ ? capturing_ : nullptr;
    if (pool != nullptr) {
      if (void* ptr = pop(pool->free, rounded)) return ptr;  // still counted as in use (see deallocate)
    }
    void* ptr = pop(free_, rounded);
    if (ptr == nullptr) ptr = malloc_locked(bytes, rounded);
    if (pool != nullptr) pool_blocks_[ptr] = pool;
    record_alloc(rounded);
    return ptr;
  }

  void deallocate(void* ptr, size_t bytes) override {
    if (ptr == nullptr) return;
    const size_t rounded = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pool_blocks_.find(ptr);
    if (it != pool_blocks_.end()) {  // a graph's block: in use by its replays until the graph goes
      it->second->free[rounded].push_back(ptr);
      return;
    }
    free_[rounded].push_back(ptr);
    record_free(rounded);
  }

  void release_cached() override {
    std::lock_guard<std::mutex> lock(mutex_);
    release_locked();
  }

  Device device() const override { return Device::cuda(index_); }

  // The calling thread's allocations come from a new pool until end_pool().
  GraphPool* begin_pool() {
    std::lock_guard<std::mutex> lock(mutex_);
    LRSA_CHECK(capturing_ == nullptr, "cuda:{}: a CUDA graph capture is already in progress", index_);
    capturing_ = new GraphPool();
    capturing_thread_ = std::this_thread::get_id();
    return capturing_;
  }

  void end_pool() {
    std::lock_guard<std::mutex> lock(mutex_);
    capturing_ = nullptr;
  }

  // The pool's free blocks return to the free lists; those a tensor still holds go there when freed.
  void release_pool(GraphPool* pool) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, blocks] : pool->free) {
      for (void* p : blocks) {
        free_[size].push_back(p);
        record_free(size);
      }
    }
    std::erase_if(pool_blocks_, [pool](const auto& entry) { return entry.second == pool; });
    delete pool;
  }

 private:
  // Small blocks round to 512 B, large ones to 2 MiB, so similar sizes share free lists.
  static size_t round_size(size_t bytes) {
    const size_t unit = bytes < (size_t(1) << 20) ? 512 : (size_t(2) << 20);
    return (bytes + unit - 1) / unit * unit;
  }

  static void* pop(std::map<size_t, std::vector<void*>>& lists, size_t rounded) {
    auto it = lists.find(rounded);
    if (it == lists.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back();
    it->second.pop_back();
    return ptr;
  }

  void* malloc_locked(size_t bytes, size_t rounded) {
    void* ptr = nullptr;
    set_device(index_);
    cudaError_t status = cudaMalloc(&ptr, rounded);
    if (status != cudaSuccess) {  // give the cache back to the driver and try once more
      cudaGetLastError();
      release_locked();
      status = cudaMalloc(&ptr, rounded);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      fail("cuda:{} out of memory allocating {:.1f} MiB ({:.1f} MiB in use, {:.1f} MiB reserved): {}", index_,
           double(bytes) / (1 << 20), double(stats().current_bytes) / (1 << 20), double(reserved_) / (1 << 20),
           cudaGetErrorString(status));
    }
    reserved_ += int64_t(rounded);
    set_reserved(reserved_);
    return ptr;
  }

  void release_locked() {
    set_device(index_);
    LRSA_CUDA_CHECK(cudaDeviceSynchronize());
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) {
        LRSA_CUDA_CHECK(cudaFree(p));
        reserved_ -= int64_t(size);
      }
      blocks.clear();
    }
    set_reserved(reserved_);
  }

  int index_;
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  int64_t reserved_ = 0;
  GraphPool* capturing_ = nullptr;  // the pool of the capture in progress, for capturing_thread_
  std::thread::id capturing_thread_;
  std::unordered_map<void*, GraphPool*> pool_blocks_;  // every block of a live pool, held or free
};

int current_device() {
  int d = 0;
  LRSA_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

constexpr int kMaxDims = 8;
struct StridedLayout {
  int64_t shape[kMaxDims];
  int64_t dst_strides[kMaxDims];
  int64_t src_strides[kMaxDims];
  int dims;
};

template <typename Dst, typename Src>
__global__ void copy_strided_kernel(Dst* dst, const Src* src, int64_t n, StridedLayout layout) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, d_off = 0, s_off = 0;
    for (int d = layout.dims - 1; d >= 0; --d) {
      const int64_t idx = rest % layout.shape[d];
      rest /= layout.shape[d];
      d_off += idx * layout.dst_strides[d];
      s_off += idx * layout.src_strides[d];
    }
    if constexpr (is_float_type<Dst> || is_float_type<Src>) dst[d_off] = from_float<Dst>(to_float(src[s_off]));
    else dst[d_off] = Dst(src[s_off]);
  }
}

// Contiguous dtype conversion (the "cast" op): K elements per thread and step, 16-byte accesses.
template <int K, typename Dst, typename Src>
__global__ void cast_kernel(Dst* dst, const Src* src, int64_t packs) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    float v[K];
    load_floats<K>(src + i * K, v);
    store_floats<K>(dst + i * K, v);
  }
}

template <typename T>
__global__ void fill_kernel(T* dst, int64_t n, double value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (is_float_type<T>) dst[i] = from_float<T>(float(value));
    else dst[i] = T(value);
  }
}

template <typename T>
__global__ void random_kernel(T* dst, int64_t n, uint64_t seed, uint64_t stream, float a, float b, bool normal) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = normal ? a + b * philox_normal(seed, stream, uint64_t(i))
                           : a + (b - a) * philox_uniform(seed, stream, uint64_t(i));
    dst[i] = from_float<T>(v);
  }
}

// Calls fn(T*) with T the CUDA type of dtype.
template <typename Fn>
void dispatch_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(static_cast<float*>(nullptr)); break;
    case DType::BF16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
    case DType::F16: fn(static_cast<__half*>(nullptr)); break;
    case DType::I32: fn(static_cast<int32_t*>(nullptr)); break;
    case DType::I64: fn(static_cast<int64_t*>(nullptr)); break;
    case DType::U8: fn(static_cast<uint8_t*>(nullptr)); break;
  }
}

}  // namespace

Allocator& caching_allocator(int index) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<CachingAllocator>> allocators;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = allocators[index];
  if (!slot) {
    std::string reason;
    const int n = device_count(&reason);
    LRSA_CHECK(index >= 0 && index < n, "cuda:{} is not available ({} devices{}{})", index, n,
               reason.empty() ? "" : ": ", reason);
    slot = std::make_unique<CachingAllocator>(index);
  }
  return *slot;
}

cudaStream_t current_stream() {
  thread_local std::map<int, cudaStream_t> streams;
  const int device = current_device();
  auto it = streams.find(device);
  if (it != streams.end()) return it->second;
  cudaStream_t s = nullptr;
  LRSA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  streams[device] = s;
  return s;
}

int multiprocessor_count() {
  thread_local std::map<int, int> counts;
  const int device = current_device();
  auto it = counts.find(device);
  if (it != counts.end()) return it->second;
  int n = 0;
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  counts[device] = n;
  return n;
}

void synchronize() { LRSA_CUDA_CHECK(cudaStreamSynchronize(current_stream())); }

void memcpy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  set_device(dst_device.is_cuda() ? dst_device.index : src_device.index);
  cudaStream_t s = current_stream();
  if (dst_device.is_cuda() && src_device.is_cuda() && dst_device.index != src_device.index) {
    LRSA_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, bytes, s));
  } else {
    LRSA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
  }
  if (dst_device.is_cpu() || src_device.is_cpu()) LRSA_CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy_strided(const Tensor& dst, const Tensor& src) {
  LRSA_CHECK(dst.dim() <= kMaxDims, "copy: {} has more than {} dimensions", dst.describe(), kMaxDims);
  set_device(dst.device().index);
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    LRSA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyDeviceToDevice, current_stream()));
    return;
  }
  if (is_floating(dst.dtype()) && is_floating(src.dtype()) && dst.is_contiguous() && src.is_contiguous()) {
    const bool vector = packable(n, {dst.data(), src.data()});
    dispatch_type(dst.dtype(), [&](auto* dst_tag) {
      using Dst = std::remove_pointer_t<decltype(dst_tag)>;
      dispatch_type(src.dtype(), [&](auto* src_tag) {
        using Src = std::remove_pointer_t<decltype(src_tag)>;
        if constexpr (is_float_type<Dst> && is_float_type<Src>) {
          Dst* d = static_cast<Dst*>(dst.data());
          const Src* s = static_cast<const Src*>(src.data());
          dispatch_pack<Dst, Src>(vector, [&](auto k) {
            cast_kernel<k()><<<grid_size(n / k(), 256), 256, 0, current_stream()>>>(d, s, n / k());
          });
        }
      });
    });
    LRSA_CUDA_CHECK_LAUNCH("cast");
    return;
  }
  StridedLayout layout{};
  layout.dims = int(dst.dim());
  for (int d = 0; d < layout.dims; ++d) {
    layout.shape[d] = dst.size(d);
    layout.dst_strides[d] = dst.stride(d);
    layout.src_strides[d] = src.stride(d);
  }
  dispatch_type(dst.dtype(), [&](auto* dst_tag) {
    using Dst = std::remove_pointer_t<decltype(dst_tag)>;
    dispatch_type(src.dtype(), [&](auto* src_tag) {
      using Src = std::remove_pointer_t<decltype(src_tag)>;
      copy_strided_kernel<<<grid_size(n, 256), 256, 0, current_stream()>>>(static_cast<Dst*>(dst.data()),
                                                                       static_cast<const Src*>(src.data()), n, layout);
    });
  });
  LRSA_CUDA_CHECK_LAUNCH("copy_strided");
}

void fill(const Tensor& dst, double value) {
  set_device(dst.device().index);
  const int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_type(dst.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fill_kernel<<<grid_size(n, 256), 256, 0, current_stream()>>>(static_cast<T*>(dst.data()), n, value);
  });
  LRSA_CUDA_CHECK_LAUNCH("fill");
}

namespace {
void fill_random(const Tensor& dst, uint64_t seed, uint64_t stream, float a, float b, bool normal) {
  LRSA_CHECK(is_floating(dst.dtype()) && dst.is_contiguous(), "random fill: needs a contiguous float tensor, got {}",
             dst.describe());
  set_device(dst.device().index);
  const int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_type(dst.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (is_float_type<T>)
      random_kernel<<<grid_size(n, 256), 256, 0, current_stream()>>>(static_cast<T*>(dst.data()), n, seed, stream, a, b, normal);
  });
  LRSA_CUDA_CHECK_LAUNCH("fill_random");
}
}  // namespace

void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t stream, float lo, float hi) {
  fill_random(dst, seed, stream, lo, hi, false);
}
void fill_normal(const Tensor& dst, uint64_t seed, uint64_t stream, float mean, float std) {
  fill_random(dst, seed, stream, mean, std, true);
}

Graph::Graph(Device device, const std::function<void()>& record) : device_(device.index) {
  LRSA_CHECK(device.is_cuda(), "cuda::Graph: {} is not a CUDA device", device.str());
  set_device(device_);
  auto& allocator = static_cast<CachingAllocator&>(caching_allocator(device_));
  const cudaStream_t stream = current_stream();
  pool_ = allocator.begin_pool();
  cudaGraph_t graph = nullptr;
  // Relaxed: the allocator may cudaMalloc a new block for the pool while recording, a call the
  // Global and ThreadLocal modes reject (it is not stream-ordered; safe here, since the pool keeps
  // the block for the graph). What conflicts with the capture (synchronizing with this stream,
  // copies to pageable host memory) still fails it in this mode.
  cudaError_t status = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
  if (status == cudaSuccess) {
    try {
      record();
    } catch (...) {
      allocator.end_pool();
      cudaStreamEndCapture(stream, &graph);  // ends the (invalidated) capture so the stream works again
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      allocator.release_pool(pool_);  // nothing ran: its blocks were never written
      throw;
    }
    status = cudaStreamEndCapture(stream, &graph);
  }
  allocator.end_pool();
  if (status == cudaSuccess) status = cudaGraphInstantiate(&exec_, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (status != cudaSuccess) {
    cudaGetLastError();
    allocator.release_pool(pool_);
    fail("cuda:{}: capturing a CUDA graph failed: {} (a recorded op synchronized with the stream?)", device_,
         cudaGetErrorString(status));
  }
}

Graph::~Graph() {
  // A replay in flight still completes (the executable is freed after it); later work on the
  // stream, which may get the pool's blocks, is ordered after it.
  cudaGraphExecDestroy(exec_);
  static_cast<CachingAllocator&>(caching_allocator(device_)).release_pool(pool_);
}

void Graph::launch() const {
  set_device(device_);
  LRSA_CUDA_CHECK(cudaGraphLaunch(exec_, current_stream()));
}

}  // namespace lrsa::cuda
