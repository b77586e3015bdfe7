// kernels/attn_delta.cuh: the attention backward's first pass, D = rowsum(dO * O) per query row and
// head, shared by the native backward (attn_flash_backward.cu) and the Hopper one (attn_wgmma.cu,
// dev/wgmma_attn_bwd.cu). Needs only the CUDA headers, so the dev harnesses build it with nvcc alone.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace lrsa::cuda {

__device__ __forceinline__ float delta_operand(float v) { return v; }
__device__ __forceinline__ float delta_operand(__nv_bfloat16 v) { return __bfloat162float(v); }

// o, d_o: [T, Hq, D] with rows o_stride and d_o_stride elements apart. delta: [Hq][rows] f32, with
// row t at padded_row[t] (the Hopper kernels pad every document to whole tiles) or, when padded_row
// is null, at t (rows = T). A (row, head) takes D / (16 / sizeof(Element)) lanes of a warp (a power
// of two up to 32 for D = 64 or 128), each 16 bytes of o and d_o: one load each where `vectors` (both
// 16-byte aligned, and so their rows), element by element otherwise.
template <typename Element>
__global__ void delta_kernel(const Element* __restrict__ o, int64_t o_stride, const Element* __restrict__ d_o,
                             int64_t d_o_stride, const int* __restrict__ padded_row, int T, int Hq, int D, int rows,
                             bool vectors, float* __restrict__ delta) {
  constexpr int kPerLane = 16 / sizeof(Element);
  const int lanes = D / kPerLane;
  const int64_t item = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / lanes;
  const int part = threadIdx.x % lanes;
  const bool valid = item < int64_t(T) * Hq;  // the others still take part in the shuffles
  float sum = 0.0f;
  if (valid) {
    const int64_t row = item / Hq;
    const int head = int(item % Hq), column = head * D + part * kPerLane;
    const Element* o_part = o + row * o_stride + column;
    const Element* d_o_part = d_o + row * d_o_stride + column;
    Element a[kPerLane], b[kPerLane];
    if (vectors) {
      *reinterpret_cast<uint4*>(a) = *reinterpret_cast<const uint4*>(o_part);
      *reinterpret_cast<uint4*>(b) = *reinterpret_cast<const uint4*>(d_o_part);
    } else {
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) a[e] = o_part[e], b[e] = d_o_part[e];
    }
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) sum += delta_operand(a[e]) * delta_operand(b[e]);
  }
  for (int offset = lanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  if (valid && part == 0) delta[int64_t(item % Hq) * rows + (padded_row ? padded_row[item / Hq] : item / Hq)] = sum;
}

// Blocks of 256 threads that cover every (row, head) of delta_kernel.
template <typename Element>
inline unsigned delta_blocks(int T, int Hq, int D) {
  const int64_t threads = int64_t(T) * Hq * (D / (16 / int(sizeof(Element))));
  return unsigned((threads + 255) / 256);
}

}  // namespace lrsa::cuda
