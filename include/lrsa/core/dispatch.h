#pragma once
// Device dispatch for ops: CPU code follows the macro, CUDA code is called when the tensor lives
// on a GPU. In a build without CUDA the CUDA call is not compiled and a GPU tensor is an error.
#include "lrsa/core/error.h"
#include "lrsa/core/op_profiler.h"

#ifdef LRSA_WITH_CUDA
#define LRSA_DISPATCH_CUDA(device, op_name, ...) \
  if ((device).is_cuda()) {                      \
    ::lrsa::profiler::OpScope lrsa_op_scope_(op_name); \
    __VA_ARGS__;                                 \
    return;                                      \
  }
#else
#define LRSA_DISPATCH_CUDA(device, op_name, ...)                                                   \
  if ((device).is_cuda())                                                                          \
  ::lrsa::fail("{}: tensors are on {}, but this build has no CUDA backend (nvcc was not found)", \
               op_name, (device).str())
#endif
