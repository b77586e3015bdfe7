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
// is null, at t (rows = T). One warp per (row, head).
template <typename Element>
__global__ void delta_kernel(const Element* __restrict__ o, int64_t o_stride, const Element* __restrict__ d_o,
                             int64_t d_o_stride, const int* __restrict__ padded_row, int T, int Hq, int D, int rows,
                             float* __restrict__ delta) {
  const int64_t item = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (item >= int64_t(T) * Hq) return;
  const int64_t row = item / Hq;
  const int head = int(item % Hq);
  const Element* o_row = o + row * o_stride + int64_t(head) * D;
  const Element* d_o_row = d_o + row * d_o_stride + int64_t(head) * D;
  float sum = 0.0f;
  for (int c = lane; c < D; c += 32) sum += delta_operand(o_row[c]) * delta_operand(d_o_row[c]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  if (lane == 0) delta[int64_t(head) * rows + (padded_row ? padded_row[row] : row)] = sum;
}

// Blocks of 256 threads (8 warps) that cover every (row, head) of delta_kernel.
inline unsigned delta_blocks(int T, int Hq) { return unsigned((int64_t(T) * Hq + 7) / 8); }

}  // namespace lrsa::cuda
