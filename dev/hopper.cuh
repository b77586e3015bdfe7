// dev/hopper.cuh: what the Hopper dev harnesses share on the host: error checks, event timing, the
// report of the kernels' CTA time spans, and the command line. The device side (wgmma, mbarriers,
// TMA, CtaSpan) is the kernels' own: kernels/hopper.cuh.
#pragma once
#include "../kernels/hopper.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace lrsa::cuda::hopper;

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));   \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// [T, H, head_dim] bf16, rows H x head_dim apart, boxes of `rows` x one head x 64 columns.
inline CUtensorMap tensor_map(const __nv_bfloat16* data, int T, int H, int rows, int head_dim = 64) {
  CUtensorMap map;
  if (!lrsa::cuda::hopper::tensor_map(map, data, T, H, head_dim, int64_t(H) * head_dim, rows)) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled failed or not found\n");
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

// The grid of a persistent kernel (the forward): as many CTAs as the device holds at once, at most
// `items` (kernels/cuda_common.cuh's resident_grid, which the launchers use, needs the runtime library).
template <typename Kernel>
int resident_ctas(Kernel kernel, int threads, int smem_bytes, int items) {
  int device = 0, sms = 0, per_sm = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
  return std::min(items, std::max(per_sm, 1) * sms);
}

// The spans of one more launch(spans) over `items` work items: a CTA each (the backward), or the
// items a persistent CTA takes in turn (the forward).
template <typename Launch>
std::vector<CtaSpan> record_spans(Launch&& launch, size_t items) {
  std::vector<CtaSpan> spans(items);
  CtaSpan* device = nullptr;
  CHECK_CUDA(cudaMalloc(&device, items * sizeof(CtaSpan)));
  launch(device);
  CHECK_CUDA(cudaMemcpy(spans.data(), device, items * sizeof(CtaSpan), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaFree(device));
  return spans;
}

// A work item's time fitted (least squares) as fixed + per plain step + per masked step, its mean
// start (to the first step's data) and finish (after the last step), the SMs' busy share of the
// kernel's span, and the mean gap between one item's end and the next one's start on an SM.
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
  std::printf("%-40s spans: %d items on %d SMs in %.1f us; per item %.2f us + %.3f us per plain step + %.3f per masked "
              "(mean %.1f steps, %.1f masked); start %.2f us, finish %.2f us; SMs busy %.1f%% of the span; "
              "mean gap between items on an SM %.2f us\n",
              name, int(n), sms, span_us, m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2], steps / n,
              masked / n, start / n, finish / n, 100.0 * busy / (sms * span_us), gap_count ? gaps / gap_count : 0.0);
}

// The harnesses' command line: no argument checks, then times; `--check` only checks (CTest); a
// harness may take other single flags too (`extra`). Returns the flag given, or "" for none.
inline std::string harness_flag(int argc, char** argv, const char* program, std::vector<std::string> extra = {}) {
  extra.insert(extra.begin(), "--check");
  if (argc == 1) return "";
  if (argc == 2 && std::find(extra.begin(), extra.end(), argv[1]) != extra.end()) return argv[1];
  std::string usage;
  for (const std::string& flag : extra) usage += (usage.empty() ? "" : " | ") + flag;
  std::fprintf(stderr, "usage: %s [%s]\n", program, usage.c_str());
  std::exit(2);
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
