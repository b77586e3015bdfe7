#pragma once
// Harness shared by the lrsa-bench subcommands (src/app/bench/<family>.cpp): GPU timing with CUDA
// events, the ceilings every result is compared against (device copy bandwidth, cuBLAS bf16 GEMM
// throughput), a direct cuBLAS GEMM as the reference for our products, GPU-vs-CPU self-checks and
// the report (aligned table on stdout, JSON lines file).
//
// Adding a family: write src/app/bench/<family>.cpp with `Subcommand register_<family>(CLI::App&)`,
// declare it below and list it in main.cpp. Every subcommand takes the common options
// (add_common_options: --json, --warmup, --warmup-ms, --repeats) so scripts/gpu/run.sh can run them all alike.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "lrsa/core/tensor.h"

namespace lrsa::bench {

struct Subcommand {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the process exit code
};

Subcommand register_ops(CLI::App& app);
Subcommand register_attention(CLI::App& app);
Subcommand register_infer(CLI::App& app);

struct CommonOptions {
  std::string json;  // JSON lines output; empty: none
  int warmup = 3;
  // Untimed runs go on until they took this long (at least `warmup` of them): under a power cap
  // the clocks take a fraction of a second to settle to a new load.
  double warmup_ms = 0;
  int repeats = 10;
};
void add_common_options(CLI::App* app, CommonOptions& options);

// True when a CUDA GPU is usable; otherwise prints why (naming `what`) to stderr.
bool require_gpu(const std::string& what);
std::string device_name();

// The median of `values` (the mean of the middle two for an even count; not empty).
double median(std::vector<double> values);

// Median time in milliseconds of fn on the current CUDA stream: `repeats` calls each bracketed by
// CUDA events, each after a 256 MiB memset that flushes the L2 (cold-cache numbers; the memset also
// hides the host's launch overhead), after untimed calls made the same way (`warmup` of them, more
// until `warmup_ms` passed). fn may synchronize (its waits are timed too).
double time_ms(const std::function<void()>& fn, const CommonOptions& timing);

struct Ceilings {
  double copy_tbps = 0;    // device-to-device copy, counting read + write bytes
  double gemm_tflops = 0;  // cuBLAS bf16 GEMM (fp32 accumulation), square 8192
};
Ceilings measure_ceilings(const CommonOptions& timing);

// C = op(A) @ op(B) + beta * C (row-major, as ops::matmul; no batch) through cublasGemmEx: the
// reference our cuBLASLt path is held to.
void cublas_gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float beta);

// Self-check of one output: GPU result against the CPU result of the same op on the same inputs.
// Passes when |gpu - cpu| <= atol * max|cpu| + rtol * |cpu| elementwise (rtol 0 and atol 0:
// bitwise equality of the values).
struct Check {
  std::string name;
  bool pass = true;
  double max_error = 0;  // max |gpu - cpu| / max|cpu|
  std::string detail;    // the failing element, when any
};
Check compare(const std::string& name, const Tensor& gpu, const Tensor& cpu, double rtol, double atol);

// One measured row. Exactly one of bytes / flops is non-zero; `formula` says how it was counted.
struct Row {
  std::string family;  // "ops", "attention", ...
  std::string op;
  std::string config;  // model / case name
  int64_t tokens = 0;
  std::string shape, dtype;
  double ms = 0;
  double bytes = 0, flops = 0;
  std::string formula;
  double ref_ms = 0;     // the reference implementation on the same problem (0: none)
  std::string ref_name;  // "cuBLAS", ...
  double min_ratio = 0;  // required ref_ms / ms (0: informative only)
  std::string check;     // correctness self-check of the op: PASS, FAIL, or "" when not checked
  std::string note;
};

class Report {
 public:
  Report(std::string family, const CommonOptions& options, const Ceilings& ceilings);
  void add_check(const Check& check);
  void add(const Row& row);
  // Prints the table and the summary, writes the JSON lines; returns the exit code (1 when a
  // check failed or a required ratio was missed).
  int finish();

 private:
  std::string family_;
  std::string json_path_;
  Ceilings ceilings_;
  std::vector<Check> checks_;
  std::vector<Row> rows_;
};

}  // namespace lrsa::bench
