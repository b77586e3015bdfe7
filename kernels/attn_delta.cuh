// kernels/attn_delta.cuh: the attention backward's first pass, D = rowsum(dO * O) per query row and
// head, shared by the native backward (attn_flash_backward.cu) and the Hopper one (attn_wgmma.cu,
// dev/wgmma_attn_bwd.cu). Needs only the CUDA headers, so the dev harnesses build it with nvcc alone.
// For the Hopper backward the same pass also writes the tile-padded lse and zeroes the fp32 sums the
// backward adds into: all memory-bound, so one launch instead of a memset and two kernels.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace lrsa::cuda {

__device__ __forceinline__ float delta_operand(float v) { return v; }
__device__ __forceinline__ float delta_operand(__nv_bfloat16 v) { return __bfloat162float(v); }

// What delta_kernel also writes, each skipped where its pointer is null: padded_lse [Hq][rows], lse
// [Hq, T] times lse_scale at every padded row (0 at the pads); and zero_count 16-byte zeros from
// `zero` on.
struct DeltaExtras {
  const float* lse = nullptr;
  float lse_scale = 1.0f;
  float* padded_lse = nullptr;
  float4* zero = nullptr;
  int64_t zero_count = 0;
};

// o, d_o: [T, Hq, D] with rows o_stride and d_o_stride elements apart. delta: [Hq][rows] f32 over
// padded rows (the Hopper kernels pad every document to whole tiles): padded row p holds row
// padded_source[p], or D = 0 at the pads (-1), so nothing needs zeroing first; when padded_source is
// null, padded row p is row p (rows = T). A (padded row, head) takes D / (16 / sizeof(Element)) lanes
// of a warp (a power of two up to 32 for D = 64 or 128), each 16 bytes of o and d_o: one load each
// where `vectors` (both 16-byte aligned, and so their rows), element by element otherwise.
template <typename Element>
__global__ void delta_kernel(const Element* __restrict__ o, int64_t o_stride, const Element* __restrict__ d_o,
                             int64_t d_o_stride, const int* __restrict__ padded_source, int T, int Hq, int D, int rows,
                             bool vectors, float* __restrict__ delta, DeltaExtras extras) {
  constexpr int kPerLane = 16 / sizeof(Element);
  const int lanes = D / kPerLane;
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t item = thread / lanes, padded_row = item / Hq;
  const int head = int(item % Hq), part = threadIdx.x % lanes;
  const bool valid = item < int64_t(rows) * Hq;  // the others still take part in the shuffles
  const int64_t row = !valid ? -1 : padded_source ? padded_source[padded_row] : padded_row;
  float sum = 0.0f;
  if (row >= 0) {
    const int column = head * D + part * kPerLane;
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
  if (valid && part == 0) {
    const int64_t at = int64_t(head) * rows + padded_row;
    delta[at] = sum;
    if (extras.padded_lse)
      extras.padded_lse[at] = row >= 0 ? extras.lse[int64_t(head) * T + row] * extras.lse_scale : 0.0f;
  }
  // Thread i zeroes words i, i + threads, ...: each pass of the grid stores one contiguous stretch.
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = thread; i < extras.zero_count; i += threads) extras.zero[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// Blocks of 256 threads that cover every (padded row, head) of delta_kernel, rows padded rows.
template <typename Element>
inline unsigned delta_blocks(int rows, int Hq, int D) {
  const int64_t threads = int64_t(rows) * Hq * (D / (16 / int(sizeof(Element))));
  return unsigned((threads + 255) / 256);
}

}  // namespace lrsa::cuda
