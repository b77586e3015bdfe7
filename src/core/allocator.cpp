#include "lrsa/core/allocator.h"

#include <cstdlib>
#include <new>

#include "lrsa/core/cuda_backend.h"
#include "lrsa/core/error.h"

namespace lrsa {

MemoryStats Allocator::stats() const {
  return MemoryStats{current_.load(), peak_.load(), reserved_.load(), num_allocs_.load()};
}

void Allocator::reset_peak() { peak_.store(current_.load()); }

void Allocator::record_alloc(size_t bytes) {
  int64_t now = current_.fetch_add(int64_t(bytes)) + int64_t(bytes);
  num_allocs_.fetch_add(1);
  int64_t peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
}

void Allocator::record_free(size_t bytes) { current_.fetch_sub(int64_t(bytes)); }

namespace {

// Host memory: aligned to 256 bytes so vectorized kernels and pinned copies need no special case.
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    size_t rounded = (bytes + 255) / 256 * 256;
    void* p = rounded == 0 ? nullptr : std::aligned_alloc(256, rounded);
    if (rounded != 0 && p == nullptr)
      fail("cpu allocator: out of memory allocating {} bytes ({} in use)", bytes, stats().current_bytes);
    record_alloc(bytes);
    set_reserved(stats().current_bytes);
    return p;
  }
  void deallocate(void* ptr, size_t bytes) override {
    std::free(ptr);
    record_free(bytes);
    set_reserved(stats().current_bytes);
  }
  Device device() const override { return Device::cpu(); }
};

}  // namespace

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) {
    static CpuAllocator cpu;
    return cpu;
  }
#ifdef LRSA_WITH_CUDA
  return cuda::caching_allocator(device.index);
#else
  fail("device {}: this build has no CUDA backend (nvcc was not found at configure time)", device.str());
#endif
}

}  // namespace lrsa
