// dev/wgmma_tile.cu: the smallest wgmma check on sm_90a (a dev harness, not part of the build).
//
// One warpgroup computes S = Q K^T (64 x 64, K = 64) with both operands in shared memory (128B
// swizzle, K-major), then O = P V with P = bf16(S) taken straight from S's accumulator registers
// (A from registers) and V in shared memory as stored, [key][d] (MN-major B, transposed).
// It checks the facts the Hopper attention kernels will stand on: the swizzle, the descriptor
// fields, the accumulator layout and the accumulator-to-A repack. For V it tries the 8-row-group
// stride in either descriptor field (the other holds a wrong stride) and says which one the
// hardware reads.
//
//   nvcc -std=c++20 -O2 -gencode arch=compute_90a,code=sm_90a dev/wgmma_tile.cu -o build-gpu/wgmma_tile && build-gpu/wgmma_tile
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));   \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

constexpr int kRows = 64;  // M of one warpgroup, N of S, keys; K = d = 64

// 128B swizzle: a row of 64 bf16 is 128 bytes = 8 chunks of 16 bytes; chunk c of row r sits at
// chunk c ^ (r % 8). Tiles start 1024-byte aligned, so the pattern is the absolute one.
__device__ int swizzled_offset(int row, int col) {  // in elements
  const int chunk = col / 8, within = col % 8;
  return row * 64 + ((chunk ^ (row % 8)) * 8) + within;
}

// Descriptor: start address, leading and stride byte offsets (all >> 4), 128B swizzle (mode 1 in
// bits 62-63), base offset 0 (1024-byte aligned tiles).
__device__ uint64_t descriptor(const void* smem, uint32_t leading_bytes, uint32_t stride_bytes) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t desc = 0;
  desc |= uint64_t((address & 0x3FFFF) >> 4);
  desc |= uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16;
  desc |= uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32;
  desc |= uint64_t(1) << 62;
  return desc;
}

__device__ void fence_operands(float (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (+)= A B, A and B from shared memory, both K-major (no transpose).
__device__ void wgmma_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D (+)= A B, A from registers (4 x bf16x2), B from shared memory, transposed (MN-major).
__device__ void wgmma_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

__device__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo in the low half
  return *reinterpret_cast<const uint32_t*>(&v);
}

// (row, col) of accumulator register i of this thread (m64nN, fp32).
__device__ void accumulator_position(int i, int& row, int& col) {
  const int t = threadIdx.x, warp = t / 32, lane = t % 32, group = lane / 4, quad = lane % 4;
  row = 16 * warp + group + 8 * ((i / 2) % 2);
  col = 8 * (i / 4) + 2 * quad + (i % 2);
}

// q, k, v: [64][64] bf16 row-major. s, o: [64][64] f32. v_stride_in_leading: where V's 8-row
// group stride goes (1: the leading byte offset field, 0: the stride byte offset field).
__global__ void __launch_bounds__(128) wgmma_tile_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                         const __nv_bfloat16* v, float* s, float* o,
                                                         int v_stride_in_leading) {
  __shared__ alignas(1024) __nv_bfloat16 q_s[kRows * 64], k_s[kRows * 64], v_s[kRows * 64];
  for (int e = threadIdx.x; e < kRows * 64; e += blockDim.x) {
    const int row = e / 64, col = e % 64;
    q_s[swizzled_offset(row, col)] = q[e];
    k_s[swizzled_offset(row, col)] = k[e];
    v_s[swizzled_offset(row, col)] = v[e];
  }
  // Generic-proxy stores, read next by the async proxy (wgmma).
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
  fence_operands(acc);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  // K-major, 128B swizzle: 8-row groups 1024 bytes apart (stride field); the leading field is
  // unused (1). k16 step kk starts 32 bytes further into each 128-byte row.
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    wgmma_ss(acc, descriptor(q_s + kk * 16, 16, 1024), descriptor(k_s + kk * 16, 16, 1024), kk > 0);
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  fence_operands(acc);
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    int row, col;
    accumulator_position(i, row, col);
    s[row * 64 + col] = acc[i];
  }

  // P V: k16 step kk takes S columns 16kk .. 16kk+15, i.e. accumulator registers 8kk .. 8kk+7,
  // as pairs; V's rows 16kk .. 16kk+15 start 16 * 128 bytes further.
  float out[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) out[i] = 0.0f;
  const uint32_t wrong = 512;  // a stride no correct read would use, inside the tile (no fault)
  // All of P before the fence: registers written between it and the wgmmas that read them are
  // undefined behaviour.
  uint32_t a[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) a[kk][r] = pack_bf16x2(acc[8 * kk + 2 * r], acc[8 * kk + 2 * r + 1]);
  fence_operands(out);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const __nv_bfloat16* v_k = v_s + kk * 16 * 64;
    const uint64_t desc_v = v_stride_in_leading ? descriptor(v_k, 1024, wrong) : descriptor(v_k, wrong, 1024);
    wgmma_rs_tb(out, a[kk], desc_v, kk > 0);
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  fence_operands(out);
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    int row, col;
    accumulator_position(i, row, col);
    o[row * 64 + col] = out[i];
  }
}

float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

int main() {
  const int n = kRows * 64;
  std::vector<__nv_bfloat16> q(n), k(n), v(n);
  std::vector<float> qf(n), kf(n), vf(n);
  uint32_t state = 12345;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return float(state >> 8) / float(1 << 24) * 2.0f - 1.0f;
  };
  for (int e = 0; e < n; ++e) {
    qf[e] = bf16_round(next()), kf[e] = bf16_round(next()), vf[e] = bf16_round(next());
    q[e] = __float2bfloat16(qf[e]), k[e] = __float2bfloat16(kf[e]), v[e] = __float2bfloat16(vf[e]);
  }
  __nv_bfloat16 *q_d, *k_d, *v_d;
  float *s_d, *o_d;
  CHECK_CUDA(cudaMalloc(&q_d, n * sizeof(__nv_bfloat16)));
  CHECK_CUDA(cudaMalloc(&k_d, n * sizeof(__nv_bfloat16)));
  CHECK_CUDA(cudaMalloc(&v_d, n * sizeof(__nv_bfloat16)));
  CHECK_CUDA(cudaMalloc(&s_d, n * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&o_d, n * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(q_d, q.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(k_d, k.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(v_d, v.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));

  bool s_ok_both = true;
  int o_ok_count = 0;
  const char* o_field = "neither";
  for (int v_stride_in_leading : {0, 1}) {
    CHECK_CUDA(cudaMemset(s_d, 0xFF, n * sizeof(float)));  // NaN: an unwritten element fails
    CHECK_CUDA(cudaMemset(o_d, 0xFF, n * sizeof(float)));
    wgmma_tile_kernel<<<1, 128>>>(q_d, k_d, v_d, s_d, o_d, v_stride_in_leading);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<float> s(n), o(n);
    CHECK_CUDA(cudaMemcpy(s.data(), s_d, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(o.data(), o_d, n * sizeof(float), cudaMemcpyDeviceToHost));
    // References in double: S from the bf16 inputs; O from P = bf16(S as the GPU computed it), so
    // that O checks the P V product alone. fp32 accumulation of 64 terms of size <= 1 (S) and
    // <= 64 (O) stays well inside these bounds.
    double s_err = 0, o_err = 0;
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < 64; ++c) {
        double ref = 0;
        for (int x = 0; x < 64; ++x) ref += double(qf[r * 64 + x]) * kf[c * 64 + x];
        const double e = std::fabs(ref - s[r * 64 + c]);
        s_err = std::isnan(s[r * 64 + c]) ? INFINITY : std::fmax(s_err, e);
        double ref_o = 0;
        for (int x = 0; x < 64; ++x) ref_o += double(bf16_round(s[r * 64 + x])) * vf[x * 64 + c];
        const double eo = std::fabs(ref_o - o[r * 64 + c]);
        o_err = std::isnan(o[r * 64 + c]) || std::isnan(ref_o) ? INFINITY : std::fmax(o_err, eo);
      }
    }
    const bool s_ok = s_err < 1e-3, o_ok = o_err < 1e-2;
    std::printf("V's 8-row group stride in the %s field: S = Q K^T max error %.3g %s; O = P V max error %.3g %s\n",
                v_stride_in_leading ? "leading" : "stride", s_err, s_ok ? "PASS" : "FAIL", o_err,
                o_ok ? "PASS" : "FAIL");
    s_ok_both = s_ok_both && s_ok;
    if (o_ok) {
      ++o_ok_count;
      o_field = v_stride_in_leading ? "leading" : "stride";
    }
  }
  if (o_ok_count == 2) o_field = "either (the other is not read at N = 64)";
  std::printf("S = Q K^T: %s; O = P V: %s; V (MN-major) reads its 8-row group stride from the %s field\n",
              s_ok_both ? "PASS" : "FAIL", o_ok_count > 0 ? "PASS" : "FAIL", o_field);
  return s_ok_both && o_ok_count > 0 ? 0 : 1;
}
