#pragma once
// The CUDA side of the core runtime (implemented in kernels/core_*.cu). Only compiled and
// included when LRSA_WITH_CUDA is defined; callers dispatch on Tensor::device().
#ifdef LRSA_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <string>

#include "lrsa/core/tensor.h"

// Throws lrsa::Error naming the call and CUDA's message when a runtime call fails.
#define LRSA_CUDA_CHECK(call)                                                                    \
  do {                                                                                           \
    cudaError_t lrsa_cuda_status_ = (call);                                                      \
    if (lrsa_cuda_status_ != cudaSuccess)                                                        \
      ::lrsa::fail("CUDA error {} ({}) at {}:{}: {}", int(lrsa_cuda_status_),                    \
                   cudaGetErrorString(lrsa_cuda_status_), __FILE__, __LINE__, #call);            \
  } while (0)

// After a kernel launch: reports launch-configuration errors with the kernel's name.
#define LRSA_CUDA_CHECK_LAUNCH(name) LRSA_CUDA_CHECK(cudaGetLastError())

namespace lrsa::cuda {

// Device count, or 0 with `reason` set when the driver or device is unavailable.
int device_count(std::string* reason);

// The caching allocator of device `index` (one per device).
Allocator& caching_allocator(int index);

// The stream all runtime work of the calling thread is queued on (per device; default: a
// non-blocking stream created on first use).
cudaStream_t current_stream();
void synchronize();

// Raw byte copy between a host pointer and a device pointer (or device to device), on the
// current stream, waiting for completion when either side is host memory.
void memcpy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

// dst <- src, both on the same CUDA device, same shape, any strides and dtypes.
void copy_strided(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);  // dst contiguous
void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t stream, float lo, float hi);
void fill_normal(const Tensor& dst, uint64_t seed, uint64_t stream, float mean, float std);

// A CUDA graph of the work `record` queues on the current stream of `device`: captured once
// (nothing runs while recording), replayed by launch() on the current stream. Memory allocated
// while recording comes from a private pool of the caching allocator that the graph owns: a
// block freed during the capture (the graph's scratch) or after it (an output, once dropped)
// returns to the pool, never to other tensors, since every replay writes it again; the pool's
// blocks go back to the allocator when the graph is destroyed, and count as in use until then.
// `record` must not synchronize the host with the stream, and whatever differs between replays
// must reach the captured kernels through device memory (their addresses and launch shapes are
// baked in).
struct GraphPool;
class Graph {
 public:
  Graph(Device device, const std::function<void()>& record);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch() const;

 private:
  int device_ = 0;
  GraphPool* pool_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace lrsa::cuda
#endif
