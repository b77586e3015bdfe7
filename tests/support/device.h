#pragma once
// What the CUDA device of a test run is, for tests of kernels that need one kind.
#ifdef LRSA_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lrsa::test {

// The wgmma attention backend runs on sm_90 devices only (kernels/attn_wgmma.h).
inline bool device_is_sm90() {
#ifdef LRSA_WITH_CUDA
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major == 9 && prop.minor == 0;
#else
  return false;
#endif
}

}  // namespace lrsa::test
