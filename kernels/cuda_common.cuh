#pragma once
// Device helpers shared by the CUDA kernels of the runtime (core_*.cu, ops_*.cu): conversions
// between the storage types and fp32, 16-byte vector access, launch sizing, dtype dispatch and
// block reductions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "lrsa/core/cuda_backend.h"

namespace lrsa::cuda {

template <typename T>
constexpr bool is_float_type = std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// Storage element <-> fp32. bf16/f16 conversions round to nearest even, like the host's.
template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half(v);
  else return T(v);
}

// The K * sizeof(T) bytes at p as 32-bit words, read or written with one 8-byte or one or more
// 16-byte accesses (p aligned to that size). The words are taken apart as raw bits below, so no
// type punning of the storage types is needed.
template <int K, typename T>
constexpr int words_of = int(K * sizeof(T) / 4);

template <int K, typename T>
__device__ __forceinline__ void load_words(const T* p, uint32_t (&w)[words_of<K, T>]) {
  constexpr int kWords = words_of<K, T>;
  if constexpr (kWords == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x;
    w[1] = v.y;
  } else {
    static_assert(kWords % 4 == 0, "vector access must cover 8 bytes or whole 16-byte words");
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  }
}

template <int K, typename T>
__device__ __forceinline__ void store_words(T* p, const uint32_t (&w)[words_of<K, T>]) {
  constexpr int kWords = words_of<K, T>;
  if constexpr (kWords == 2) {
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  } else {
    static_assert(kWords % 4 == 0, "vector access must cover 8 bytes or whole 16-byte words");
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i)
      reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
  }
}

// Element j of K elements held as 32-bit words (as load_words reads them; for K == 1 the
// element's bits in the low half of w[0]), converted to fp32.
template <int K, typename T>
__device__ __forceinline__ void unpack_floats(const uint32_t* w, float (&out)[K]) {
#pragma unroll
  for (int j = 0; j < K; ++j) {
    if constexpr (sizeof(T) == 4) {
      out[j] = __uint_as_float(w[j]);
    } else {
      const unsigned short bits = (unsigned short)(w[j / 2] >> (16 * (j % 2)));  // little endian
      if constexpr (std::is_same_v<T, __nv_bfloat16>) out[j] = __uint_as_float(uint32_t(bits) << 16);
      else out[j] = __half2float(__ushort_as_half(bits));
    }
  }
}

// K consecutive elements starting at p, converted to fp32. K == 1 is a plain scalar access; for
// K > 1 the K elements span 8 bytes or whole 16-byte words and p must be 16-byte aligned (see
// aligned16 / packable).
template <int K, typename T>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[K]) {
  if constexpr (K == 1) {
    out[0] = to_float(p[0]);
  } else {
    uint32_t w[words_of<K, T>];
    load_words<K>(p, w);
    unpack_floats<K, T>(w, out);
  }
}

// K elements kept in registers in their storage type (half the registers of fp32 for 16-bit
// types): load() reads them like load_floats, floats() converts them.
template <int K, typename T>
struct RawPack {
  uint32_t words[K == 1 ? 1 : words_of<K, T>];

  __device__ __forceinline__ void load(const T* p) {
    if constexpr (K > 1) load_words<K>(p, words);
    else if constexpr (std::is_same_v<T, float>) words[0] = __float_as_uint(p[0]);
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) words[0] = __bfloat16_as_ushort(p[0]);
    else words[0] = __half_as_ushort(p[0]);
  }
  __device__ __forceinline__ void floats(float (&out)[K]) const { unpack_floats<K, T>(words, out); }
};

template <int K, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[K]) {
  if constexpr (K == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    uint32_t w[words_of<K, T>];
#pragma unroll
    for (int j = 0; j < K; ++j) {
      if constexpr (sizeof(T) == 4) {
        w[j] = __float_as_uint(in[j]);
      } else {
        uint32_t bits;
        if constexpr (std::is_same_v<T, __nv_bfloat16>) bits = __bfloat16_as_ushort(__float2bfloat16(in[j]));
        else bits = __half_as_ushort(__float2half(in[j]));
        if (j % 2 == 0) w[j / 2] = bits;
        else w[j / 2] |= bits << 16;
      }
    }
    store_words<K>(p, w);
  }
}

// The largest pack any kernel uses: 8 elements (one 16-byte word of a 16-bit type). packable()
// checks sizes against it, so every smaller pack_of width divides the sizes too.
constexpr int kPack = 8;

// Elements per thread access for a kernel over these storage types: one 16-byte access of the
// widest type (8 for 16-bit types, 4 when f32 is involved, whose partners then move 8 bytes).
// Two 16-byte f32 words per thread would make every warp-wide access touch every other 16 bytes,
// and such half-covered sectors cost write bandwidth.
template <typename... Ts>
constexpr int pack_of = int(16 / std::max({sizeof(Ts)...}));

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// True when every pointer is 16-byte aligned and n is a multiple of kPack: the pack path (any
// pack_of width) applies.
inline bool packable(int64_t n, std::initializer_list<const void*> pointers) {
  if (n % kPack != 0) return false;
  for (const void* p : pointers)
    if (!aligned16(p)) return false;
  return true;
}

// Makes t's device the calling thread's current device: kernels launch on current_stream(),
// the stream of the current device.
inline void use_device(const Tensor& t) {
  int current = 0;
  LRSA_CUDA_CHECK(cudaGetDevice(&current));
  if (current != t.device().index) LRSA_CUDA_CHECK(cudaSetDevice(t.device().index));
}

// Streaming multiprocessors of the current device (cached per device; kernels/core_runtime.cu).
int multiprocessor_count();

// Blocks for a grid-stride loop over `items` work items: enough to fill every SM once at full
// occupancy, never more than the work needs.
inline unsigned grid_size(int64_t items, int threads_per_block) {
  const int64_t needed = (items + threads_per_block - 1) / threads_per_block;
  const int64_t resident = int64_t(multiprocessor_count()) * (2048 / threads_per_block);
  return unsigned(needed < 1 ? 1 : (needed < resident ? needed : resident));
}

// Blocks of a grid-stride kernel: as many as the device holds at once at this block size and
// shared memory (the kernel's occupancy), at most `needed`.
template <typename Kernel>
unsigned resident_grid(Kernel kernel, int threads, size_t smem, int64_t needed) {
  int per_sm = 0;
  LRSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int64_t resident = int64_t(multiprocessor_count()) * (per_sm > 0 ? per_sm : 1);
  return unsigned(needed < 1 ? 1 : (needed < resident ? needed : resident));
}

// Calls fn(T*) (a null pointer of the CUDA type) for the floating dtypes the ops accept.
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(static_cast<float*>(nullptr)); return;
    case DType::BF16: fn(static_cast<__nv_bfloat16*>(nullptr)); return;
    default: fail("{}: unsupported dtype {} (expected f32 or bf16)", op, dtype_name(dtype));
  }
}

// Calls fn(std::integral_constant<int, K>) with K = pack_of<Ts...> when `vector`, else K = 1
// (the scalar fallback for odd sizes or misaligned pointers).
template <typename... Ts, typename Fn>
void dispatch_pack(bool vector, Fn&& fn) {
  if (vector) fn(std::integral_constant<int, pack_of<Ts...>>{});
  else fn(std::integral_constant<int, 1>{});
}

// Calls fn(std::integral_constant<int, V>) for the V among Values equal to value, so that a
// runtime choice (vector width, passes per row) selects a kernel instantiation.
template <int... Values, typename Fn>
void dispatch_int(int value, const char* what, Fn&& fn) {
  const bool found = ((value == Values ? (fn(std::integral_constant<int, Values>{}), true) : false) || ...);
  if (!found) fail("internal: no kernel instantiation for {} = {}", what, value);
}

// Sum over the block of every thread's v; the result is returned to every thread. Fixed
// reduction tree, so the result is the same bits on every run. Needs blockDim.x % 32 == 0 and
// may be called repeatedly (it synchronizes before reusing its shared memory).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32), warps = int(blockDim.x / 32);
  v = warp_sum(v);
  __syncthreads();  // a previous call may still be reading partial[]
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

}  // namespace lrsa::cuda
