// dev/hopper.cuh: what the Hopper (sm_90a) dev kernels share: wgmma, shared-memory descriptors,
// mbarriers, TMA and its tensor maps. Facts and sources: the PTX ISA (wgmma, cp.async.bulk.tensor,
// mbarrier) and cuda.h (cuTensorMapEncodeTiled).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <algorithm>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));   \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

constexpr int kD = 64;  // head dim: one 128-byte swizzled row

__device__ uint64_t descriptor(uint32_t smem_address, uint32_t leading_bytes, uint32_t stride_bytes) {
  uint64_t desc = uint64_t((smem_address & 0x3FFFF) >> 4);
  desc |= uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16;
  desc |= uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32;
  return desc | (uint64_t(1) << 62);  // 128B swizzle, base offset 0
}

// ---- mbarriers, TMA, named barriers ----
__device__ void mbarrier_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ void mbarrier_expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ bool mbarrier_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for the phase of the given parity to complete. A dev guard traps instead of hanging.
__device__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  for (uint32_t tries = 0; !mbarrier_try_wait(bar, parity); ++tries)
    if (tries == (1u << 24)) __trap();
}
__device__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int col, int head, int row) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(col), "r"(head), "r"(row)
      : "memory");
}
__device__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma ----
template <int N>
__device__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ void fence_operands(uint32_t (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(d[i][r])::"memory");
}

__device__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// D (+)= A B^T for one k16 step: m64n128k16, A and B from shared memory, both K-major.
__device__ void wgmma_ss_n128(float (&d)[64], uint64_t desc_q, uint64_t desc_k, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_q), "l"(desc_k), "r"(accumulate));
}

// D += A B for one k16 step: m64n64k16, A from registers, B from shared memory, MN-major (its 8-row
// groups along K 1024 bytes apart, in the descriptor's stride field).
__device__ void wgmma_rs_n64_mn(float (&d)[32], const uint32_t (&p)[4], uint64_t desc_v) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(p[0]), "r"(p[1]), "r"(p[2]), "r"(p[3]), "l"(desc_v));
}

__device__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}


// D (+)= A B for one k16 step: m64n64k16, A and B from shared memory, both MN-major (A's 8-row
// groups along K and B's 1024 bytes apart, in the stride fields).
__device__ void wgmma_ss_n64_mn(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// ---- host ----
inline PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || ptr == nullptr) {
      std::fprintf(stderr, "cuTensorMapEncodeTiled: not found\n");
      std::exit(1);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// [T, H, 64] bf16 rows, boxes of `rows` x one head x 64, 128B swizzle.
inline CUtensorMap tensor_map(const __nv_bfloat16* data, int T, int H, int rows) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {cuuint64_t(kD), cuuint64_t(H), cuuint64_t(T)};
  const cuuint64_t strides[2] = {cuuint64_t(kD) * 2, cuuint64_t(H) * kD * 2};
  const cuuint32_t box[3] = {cuuint32_t(kD), 1, cuuint32_t(rows)}, element_strides[3] = {1, 1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(data), dims,
                                    strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled failed (%d)\n", int(r));
    std::exit(1);
  }
  return map;
}

// Mean milliseconds of `repeats` back-to-back calls of launch (CUDA events on the default stream).
template <typename Launch>
float time_ms(Launch&& launch, int repeats) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start));
  for (int r = 0; r < repeats; ++r) launch();
  CHECK_CUDA(cudaEventRecord(stop));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return ms / float(repeats);
}

// Where a CTA's time went: when it started, when its first step had its data, when its last step
// was done and when it ended (the global nanosecond timer, comparable across SMs), on which SM, and
// how many steps (key or query tiles) it ran, and how many of those were masked. A kernel given a
// non-null span array writes one per CTA; span_report() turns them into the figures that say whether
// a kernel is slow per step, per masked step, or per CTA, or short of work for some SMs.
struct CtaSpan {
  uint64_t begin, first_step, last_step, end;
  int sm, steps, masked;
};
__device__ inline uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
__device__ inline int sm_id() {
  int id;
  asm volatile("mov.u32 %0, %%smid;\n" : "=r"(id));
  return id;
}

// A CTA's time fitted (least squares) as fixed + per plain step + per masked step, its mean start (to
// the first step's data) and finish (after the last step), the SMs' busy share of the kernel's span,
// and the mean gap between one CTA's end and the next one's start on an SM.
inline void span_report(const char* name, std::vector<CtaSpan> spans) {
  if (spans.empty()) return;
  uint64_t first = spans[0].begin, last = spans[0].end;
  double m[3][4] = {};  // the normal equations [X^T X | X^T y] for x = (1, plain, masked)
  double busy = 0, gaps = 0, steps = 0, masked = 0, start = 0, finish = 0;
  int sms = 0, gap_count = 0;
  for (const CtaSpan& c : spans) {
    first = std::min(first, c.begin), last = std::max(last, c.end);
    const double x[3] = {1.0, double(c.steps - c.masked), double(c.masked)}, y = double(c.end - c.begin) * 1e-3;
    for (int r = 0; r < 3; ++r) {
      for (int col = 0; col < 3; ++col) m[r][col] += x[r] * x[col];
      m[r][3] += x[r] * y;
    }
    busy += y, steps += c.steps, masked += c.masked;
    start += double(c.first_step - c.begin) * 1e-3, finish += double(c.end - c.last_step) * 1e-3;
    sms = std::max(sms, c.sm + 1);
  }
  for (int r = 0; r < 3; ++r) m[r][r] += 1e-9;  // a column that is all zeros (no masked steps) stays solvable
  for (int r = 0; r < 3; ++r)  // Gauss-Jordan: the system is 3 x 3 and positive definite
    for (int other = 0; other < 3; ++other) {
      if (other == r) continue;
      const double f = m[other][r] / m[r][r];
      for (int col = 0; col < 4; ++col) m[other][col] -= f * m[r][col];
    }
  std::sort(spans.begin(), spans.end(),
            [](const CtaSpan& a, const CtaSpan& b) { return a.sm != b.sm ? a.sm < b.sm : a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].sm == spans[i - 1].sm && spans[i].begin >= spans[i - 1].end)
      gaps += double(spans[i].begin - spans[i - 1].end) * 1e-3, ++gap_count;
  const double n = double(spans.size()), span_us = double(last - first) * 1e-3;
  std::printf("%-40s spans: %d CTAs on %d SMs in %.1f us; per CTA %.2f us + %.3f us per plain step + %.3f per masked "
              "(mean %.1f steps, %.1f masked); start %.2f us, finish %.2f us; SMs busy %.1f%% of the span; "
              "mean gap between CTAs on an SM %.2f us\n",
              name, int(n), sms, span_us, m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2], steps / n,
              masked / n, start / n, finish / n, 100.0 * busy / (sms * span_us), gap_count ? gaps / gap_count : 0.0);
}

// The harnesses' command line: `--check` runs the checks only (CTest), no argument also times.
inline bool checks_only(int argc, char** argv, const char* program) {
  const bool check = argc == 2 && std::strcmp(argv[1], "--check") == 0;
  if (argc > 2 || (argc == 2 && !check)) {
    std::fprintf(stderr, "usage: %s [--check]\n", program);
    std::exit(2);
  }
  return check;
}

// Exits 77 (CTest: skipped) with the reason when there is no sm_90 GPU to run sm_90a code on.
inline void require_hopper(const char* program) {
  int devices = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("%s: skipped: no CUDA device\n", program);
    std::exit(77);
  }
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("%s: skipped: needs an sm_90 GPU (wgmma, TMA), found %s (sm_%d%d)\n", program, prop.name, prop.major,
                prop.minor);
    std::exit(77);
  }
}
