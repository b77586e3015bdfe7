#include "bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "lrsa/core/device.h"

#ifdef LRSA_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <map>

#include "lrsa/core/cuda_backend.h"
#endif

namespace lrsa::bench {

void add_common_options(CLI::App* app, CommonOptions& options) {
  app->add_option("--json", options.json, "write the results as JSON lines to this file");
  app->add_option("--warmup", options.warmup, "untimed runs before timing")->check(CLI::NonNegativeNumber);
  app->add_option("--warmup-ms", options.warmup_ms,
                  "untimed runs go on until they took this many milliseconds (the clocks settle under a power cap)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--repeats", options.repeats, "timed runs; the median is reported")->check(CLI::PositiveNumber);
}

bool require_gpu(const std::string& what) {
  if (cuda_available()) return true;
  std::fprintf(stderr, "%s: needs a CUDA GPU, none is usable: %s\n", what.c_str(), cuda_unavailable_reason().c_str());
  return false;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

#ifdef LRSA_WITH_CUDA

namespace {

#define BENCH_CUBLAS_CHECK(call)                                                                 \
  do {                                                                                           \
    cublasStatus_t bench_status_ = (call);                                                       \
    if (bench_status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      fail("cuBLAS error {} ({}) at {}:{}: {}", int(bench_status_), cublasGetStatusString(bench_status_), \
           __FILE__, __LINE__, #call);                                                           \
  } while (0)

cublasHandle_t cublas_handle() {
  static std::map<int, cublasHandle_t> handles;
  int device = 0;
  LRSA_CUDA_CHECK(cudaGetDevice(&device));
  cublasHandle_t& h = handles[device];
  if (h == nullptr) BENCH_CUBLAS_CHECK(cublasCreate(&h));
  BENCH_CUBLAS_CHECK(cublasSetStream(h, cuda::current_stream()));
  return h;
}

cudaDataType_t cuda_type(const Tensor& t) { return t.dtype() == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

std::string device_name() {
  int device = 0;
  LRSA_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  LRSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

double time_ms(const std::function<void()>& fn, const CommonOptions& timing) {
  cudaStream_t stream = cuda::current_stream();
  // Written before every call: evicts fn's data from the L2 (50 MB on H100/H200), and keeps the
  // GPU busy while the host prepares fn's launches, so launch overhead stays outside the timing.
  static Tensor scratch = Tensor::empty({int64_t(256) << 20}, DType::U8, Device::cuda(0));
  cudaEvent_t start = nullptr, stop = nullptr;
  LRSA_CUDA_CHECK(cudaEventCreate(&start));
  LRSA_CUDA_CHECK(cudaEventCreate(&stop));
  int calls = 0;
  auto call = [&] {
    LRSA_CUDA_CHECK(cudaMemsetAsync(scratch.data(), calls++ & 0xff, scratch.nbytes(), stream));
    LRSA_CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    LRSA_CUDA_CHECK(cudaEventRecord(stop, stream));
    LRSA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LRSA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return double(ms);
  };
  double warm_ms = 0;
  for (int i = 0; i < timing.warmup || warm_ms < timing.warmup_ms; ++i) warm_ms += call();
  std::vector<double> times;
  for (int i = 0; i < timing.repeats; ++i) times.push_back(call());
  LRSA_CUDA_CHECK(cudaEventDestroy(start));
  LRSA_CUDA_CHECK(cudaEventDestroy(stop));
  return median(std::move(times));
}

void cublas_gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float beta) {
  // Row-major C [M, N] = op(A) @ op(B) is column-major C^T = op(B)^T @ op(A)^T.
  const int64_t M = c.size(0), N = c.size(1), K = trans_a ? a.size(0) : a.size(1);
  const float alpha = 1.0f;
  BENCH_CUBLAS_CHECK(cublasGemmEx(cublas_handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  int(N), int(M), int(K), &alpha, b.data(), cuda_type(b), int(trans_b ? K : N), a.data(),
                                  cuda_type(a), int(trans_a ? M : K), &beta, c.data(), cuda_type(c), int(N),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

Ceilings measure_ceilings(const CommonOptions& timing) {
  const Device gpu = Device::cuda(0);
  Ceilings ceilings;
  {
    const int64_t bytes = int64_t(1) << 30;
    Tensor src = Tensor::zeros({bytes}, DType::U8, gpu), dst = Tensor::empty({bytes}, DType::U8, gpu);
    const double ms = time_ms([&] { cuda::memcpy_bytes(dst.data(), gpu, src.data(), gpu, size_t(bytes)); }, timing);
    ceilings.copy_tbps = 2.0 * double(bytes) / (ms * 1e-3) / 1e12;
  }
  {
    const int64_t n = 8192;
    Tensor a = Tensor::normal({n, n}, 1, 0, 0.0f, 1.0f, DType::BF16, gpu);
    Tensor b = Tensor::normal({n, n}, 1, 1, 0.0f, 1.0f, DType::BF16, gpu);
    Tensor c = Tensor::empty({n, n}, DType::BF16, gpu);
    const double ms = time_ms([&] { cublas_gemm(a, b, c, false, true, 0.0f); }, timing);
    ceilings.gemm_tflops = 2.0 * double(n) * double(n) * double(n) / (ms * 1e-3) / 1e12;
  }
  return ceilings;
}

#else  // built without CUDA: require_gpu() has already refused, nothing below is reached

std::string device_name() { return "none"; }
double time_ms(const std::function<void()>&, const CommonOptions&) { fail("lrsa-bench: built without CUDA"); }
void cublas_gemm(const Tensor&, const Tensor&, Tensor&, bool, bool, float) { fail("lrsa-bench: built without CUDA"); }
Ceilings measure_ceilings(const CommonOptions&) { fail("lrsa-bench: built without CUDA"); }

#endif

Check compare(const std::string& name, const Tensor& gpu, const Tensor& cpu, double rtol, double atol) {
  Check check;
  check.name = name;
  if (gpu.shape() != cpu.shape()) {
    check.pass = false;
    check.detail = fmt::format("shape {} vs {}", gpu.describe(), cpu.describe());
    return check;
  }
  const std::vector<double> g = gpu.to_doubles(), c = cpu.to_doubles();
  double scale = 0;
  for (double v : c) scale = std::max(scale, std::abs(v));
  const double floor = atol * scale;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - c[i]);
    const bool ok = rtol == 0 && atol == 0 ? g[i] == c[i] : err <= floor + rtol * std::abs(c[i]);
    check.max_error = std::max(check.max_error, scale > 0 ? err / scale : err);
    if (std::isnan(err)) check.max_error = INFINITY;
    if (!ok && check.pass) {
      check.pass = false;
      check.detail = fmt::format("element {}: gpu {} cpu {}", i, g[i], c[i]);
    }
  }
  return check;
}

// ---------------------------------------------------------------------------------------------
// Report

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += fmt::format("\\u{:04x}", int(ch));
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : "null"; }

}  // namespace

Report::Report(std::string family, const CommonOptions& options, const Ceilings& ceilings)
    : family_(std::move(family)), json_path_(options.json), ceilings_(ceilings) {
  std::printf("device: %s\nceilings: copy %.3f TB/s (read + write), cuBLAS bf16 GEMM %.1f TFLOP/s\n",
              device_name().c_str(), ceilings.copy_tbps, ceilings.gemm_tflops);
  if (!json_path_.empty()) {
    std::ofstream out(json_path_, std::ios::trunc);
    LRSA_CHECK(out.good(), "lrsa-bench: cannot write {}", json_path_);
    out << fmt::format("{{\"kind\":\"ceilings\",\"family\":{},\"device\":{},\"copy_tbps\":{},\"gemm_tflops\":{}}}\n",
                       json_string(family_), json_string(device_name()), json_number(ceilings.copy_tbps),
                       json_number(ceilings.gemm_tflops));
  }
}

void Report::add_check(const Check& check) {
  checks_.push_back(check);
  std::printf("check %-48s %s  max err %.3g%s%s\n", check.name.c_str(), check.pass ? "PASS" : "FAIL", check.max_error,
              check.detail.empty() ? "" : "  ", check.detail.c_str());
  std::fflush(stdout);
  if (!json_path_.empty()) {
    std::ofstream out(json_path_, std::ios::app);
    out << fmt::format("{{\"kind\":\"check\",\"family\":{},\"name\":{},\"status\":{},\"max_error\":{},\"detail\":{}}}\n",
                       json_string(family_), json_string(check.name), json_string(check.pass ? "PASS" : "FAIL"),
                       json_number(check.max_error), json_string(check.detail));
  }
}

void Report::add(const Row& row) {
  const bool flop_bound = row.flops > 0;
  const double rate = (flop_bound ? row.flops : row.bytes) / (row.ms * 1e-3) / 1e12;  // TFLOP/s or TB/s
  const double fraction = rate / (flop_bound ? ceilings_.gemm_tflops : ceilings_.copy_tbps);
  const double ratio = row.ref_ms > 0 ? row.ref_ms / row.ms : 0;
  if (rows_.empty())
    std::printf("\n%-26s %-6s %6s %-28s %-5s %9s %9s %-7s %6s %8s %-5s\n", "op", "model", "T", "shape", "dtype", "ms",
                "rate", "unit", "%ceil", "vs ref", "check");
  rows_.push_back(row);
  const std::string vs = ratio > 0 ? fmt::format("{:.2f}", ratio) : "-";
  std::printf("%-26s %-6s %6lld %-28s %-5s %9.4f %9.3f %-7s %5.1f%% %8s %-5s%s%s\n", row.op.c_str(), row.config.c_str(),
              (long long)row.tokens, row.shape.c_str(), row.dtype.c_str(), row.ms, rate, flop_bound ? "TFLOP/s" : "TB/s",
              100.0 * fraction, vs.c_str(), row.check.empty() ? "-" : row.check.c_str(), row.note.empty() ? "" : "  ",
              row.note.c_str());
  std::fflush(stdout);
  if (!json_path_.empty()) {
    std::ofstream out(json_path_, std::ios::app);
    out << fmt::format(
        "{{\"kind\":\"row\",\"family\":{},\"op\":{},\"config\":{},\"tokens\":{},\"shape\":{},\"dtype\":{},\"ms\":{},"
        "\"bytes\":{},\"flops\":{},\"formula\":{},\"{}\":{},\"fraction_of_ceiling\":{},\"ref\":{},\"ref_ms\":{},"
        "\"ref_ratio\":{},\"min_ratio\":{},\"check\":{},\"note\":{}}}\n",
        json_string(family_), json_string(row.op), json_string(row.config), row.tokens, json_string(row.shape),
        json_string(row.dtype), json_number(row.ms), json_number(row.bytes), json_number(row.flops),
        json_string(row.formula), flop_bound ? "tflops" : "tbps", json_number(rate), json_number(fraction),
        json_string(row.ref_name), json_number(row.ref_ms), json_number(ratio), json_number(row.min_ratio),
        json_string(row.check), json_string(row.note));
  }
}

int Report::finish() {
  int failed_checks = 0, missed_ratios = 0;
  for (const Check& c : checks_) failed_checks += !c.pass;
  std::printf("\nformulas:\n");
  std::vector<std::string> seen;
  for (const Row& r : rows_) {
    const std::string line = fmt::format("  {}: {}", r.op, r.formula);
    if (std::find(seen.begin(), seen.end(), line) == seen.end()) {
      seen.push_back(line);
      std::printf("%s\n", line.c_str());
    }
    if (r.min_ratio > 0 && r.ref_ms / r.ms < r.min_ratio) {
      ++missed_ratios;
      std::printf("  below the required %.2f x %s: %s %s T=%lld %s (%.2f)\n", r.min_ratio, r.ref_name.c_str(),
                  r.op.c_str(), r.config.c_str(), (long long)r.tokens, r.shape.c_str(), r.ref_ms / r.ms);
    }
  }
  std::printf("\nsummary: %zu checks, %d failed; %zu rows, %d below their required reference ratio\n", checks_.size(),
              failed_checks, rows_.size(), missed_ratios);
  if (!json_path_.empty()) {
    std::ofstream out(json_path_, std::ios::app);
    out << fmt::format("{{\"kind\":\"summary\",\"family\":{},\"checks\":{},\"failed_checks\":{},\"rows\":{},"
                       "\"missed_ratios\":{}}}\n",
                       json_string(family_), checks_.size(), failed_checks, rows_.size(), missed_ratios);
  }
  return failed_checks > 0 || missed_ratios > 0 ? 1 : 0;
}

}  // namespace lrsa::bench
