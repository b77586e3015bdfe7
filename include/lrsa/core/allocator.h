#pragma once
// Memory comes from one Allocator per device. Each keeps current/peak byte counts of what tensors
// hold (the CUDA caching allocator additionally reports what it has reserved from the driver).
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "lrsa/core/device.h"

namespace lrsa {

struct MemoryStats {
  int64_t current_bytes = 0;   // held by live allocations
  int64_t peak_bytes = 0;      // maximum of current_bytes since the last reset_peak()
  int64_t reserved_bytes = 0;  // taken from the system/driver (>= current for caching allocators)
  int64_t num_allocs = 0;      // allocations served since start
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory aligned to at least 256 bytes; throws lrsa::Error when out of memory.
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  // Gives cached blocks back to the system (no-op for non-caching allocators).
  virtual void release_cached() {}
  virtual Device device() const = 0;

  MemoryStats stats() const;
  void reset_peak();

 protected:
  void record_alloc(size_t bytes);
  void record_free(size_t bytes);
  void set_reserved(int64_t bytes) { reserved_.store(bytes); }

 private:
  std::atomic<int64_t> current_{0}, peak_{0}, reserved_{0}, num_allocs_{0};
};

// The allocator of a device (created on first use; lives for the whole program).
Allocator& allocator_for(Device device);

inline MemoryStats memory_stats(Device device) { return allocator_for(device).stats(); }

}  // namespace lrsa
