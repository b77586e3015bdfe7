// Matrix products on cuBLASLt (the linear layer's bias and residual in the epilogue), and the bias
// backward of the linear layer.
//
// Our tensors are row-major; cuBLASLt is column-major. A row-major X [r, c] is the column-major
// X^T [c, r], so C = op(A) @ op(B) is computed as C^T = op(B)^T @ op(A)^T: cuBLASLt's first
// operand is our B, its second our A, and its column-major C [N, M] is our row-major C [M, N].
// The handle, a workspace per stream and the plans (descriptors + heuristic algorithm) per shape
// are created once and kept for the life of the process.
#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>

#include "cuda_common.cuh"
#include "lrsa/ops/cuda_ops.h"
#include "lrsa/ops/matmul.h"
#include "ops_common.cuh"

#define LRSA_CUBLAS_CHECK(call)                                                                            \
  do {                                                                                                     \
    cublasStatus_t lrsa_cublas_status_ = (call);                                                           \
    if (lrsa_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::lrsa::fail("cuBLASLt error {} ({}) at {}:{}: {}", int(lrsa_cublas_status_),                        \
                   cublasLtGetStatusString(lrsa_cublas_status_), __FILE__, __LINE__, #call);               \
  } while (0)

namespace lrsa::cuda {
namespace {

// Hopper kernels want up to 32 MiB of workspace for split-K and stream-K schedules.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

int current_device_index() {
  int d = 0;
  LRSA_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

// Largest power of two (<= 256) dividing the address: what the heuristic may assume.
int64_t pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && (a % uintptr_t(align)) != 0) align /= 2;
  return align;
}

cudaDataType_t cuda_type(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Everything a plan depends on: device, types, cuBLASLt transposes and sizes (m, n, k), batch,
// batch strides, pointer alignments (A, B, C, D), the bias epilogue's type (-1: none) and how
// many candidate algorithms were timed (ops::gemm_candidates()).
using PlanKey = std::array<int64_t, 18>;

struct Plan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
};

// Process-wide state. Descriptors and handles are deliberately never destroyed: destroying them
// from static destructors would race with the CUDA runtime's own teardown at exit.
struct LtState {
  std::mutex mutex;
  std::map<int, cublasLtHandle_t> handles;
  std::map<cudaStream_t, void*> workspaces;
  std::map<PlanKey, Plan> plans;
};

LtState& lt_state() {
  static LtState* state = new LtState();
  return *state;
}

cublasLtMatrixLayout_t make_layout(DType dtype, int64_t rows, int64_t cols, int64_t batch, int64_t batch_stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  LRSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_type(dtype), uint64_t(rows), uint64_t(cols), rows));
  const int32_t count = int32_t(batch);
  LRSA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  LRSA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                     &batch_stride, sizeof(batch_stride)));
  return layout;
}

// One column-major product D = alpha * op(A) @ op(B) + beta * C (+ bias [m] broadcast over the
// columns, in the epilogue: one rounding for all of it), as cuBLASLt sees it. C and D share a
// layout; C is read only when beta != 0 and may be D itself.
struct LtProblem {
  DType ab_type, c_type;
  bool trans_a, trans_b;          // cuBLASLt's operands (our B and A)
  int64_t m, n, k, batch;         // op(A) [m, k], op(B) [k, n], C and D [m, n]
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // batch strides in elements (0: shared by the batch)
  const void* a;
  const void* b;
  const void* c;
  void* d;
  const void* bias = nullptr;  // nullptr: no bias epilogue
  DType bias_type = DType::F32;
};

constexpr size_t kMaxTimingScratch = size_t(256) << 20;

// The fastest of `found` algorithms over a few runs of the problem as it will run (alpha, beta).
// The runs write D, which the product itself then overwrites, unless the product reads C where it
// writes D (beta != 0, C = D: an accumulation): then they write a scratch buffer of its size, and
// past kMaxTimingScratch bytes (a vocabulary-sized gradient) the first algorithm wins untimed, so
// the search never adds a large transient to the peak memory. While the stream is being captured
// into a graph nothing may be timed: the first wins.
cublasLtMatmulAlgo_t fastest_algo(cublasLtHandle_t handle, const Plan& plan, const LtProblem& p, float alpha,
                                  float beta, const cublasLtMatmulHeuristicResult_t* results, int found,
                                  void* workspace) {
  cudaStream_t stream = current_stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  LRSA_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return results[0].algo;
  if (p.bias != nullptr)
    LRSA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
  Tensor scratch;
  void* d = p.d;
  if (beta != 0.0f && p.c == p.d) {
    const int64_t elements = p.stride_c * (p.batch - 1) + p.m * p.n;
    if (size_t(elements) * dtype_size(p.c_type) > kMaxTimingScratch) return results[0].algo;
    scratch = Tensor::empty({elements}, p.c_type, Device::cuda(current_device_index()));
    d = scratch.data();
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  LRSA_CUDA_CHECK(cudaEventCreate(&start));
  LRSA_CUDA_CHECK(cudaEventCreate(&stop));
  int best = -1;
  float best_ms = 0.0f;
  for (int i = 0; i < found; ++i) {
    auto launch = [&] {
      return cublasLtMatmul(handle, plan.desc, &alpha, p.a, plan.a, p.b, plan.b, &beta, p.c, plan.c, d, plan.c,
                            &results[i].algo, workspace, kWorkspaceBytes, stream);
    };
    if (launch() != CUBLAS_STATUS_SUCCESS) continue;  // an algorithm may refuse the problem: skip it
    constexpr int kRuns = 5;
    LRSA_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int r = 0; r < kRuns; ++r) LRSA_CUBLAS_CHECK(launch());
    LRSA_CUDA_CHECK(cudaEventRecord(stop, stream));
    LRSA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    LRSA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (best < 0 || ms < best_ms) best = i, best_ms = ms;
  }
  LRSA_CUDA_CHECK(cudaEventDestroy(start));
  LRSA_CUDA_CHECK(cudaEventDestroy(stop));
  return results[best < 0 ? 0 : best].algo;  // none ran: the product itself reports cuBLASLt's error
}

Plan& plan_for(LtState& state, cublasLtHandle_t handle, const LtProblem& p, float alpha, float beta, void* workspace) {
  const int64_t align_a = pointer_alignment(p.a), align_b = pointer_alignment(p.b), align_c = pointer_alignment(p.c),
                align_d = pointer_alignment(p.d);
  const int64_t bias_key = p.bias != nullptr ? int64_t(p.bias_type) : -1;
  const int candidates = ops::gemm_candidates();
  const PlanKey key = {int64_t(current_device_index()), int64_t(p.ab_type), int64_t(p.c_type), p.trans_a, p.trans_b,
                       p.m, p.n, p.k, p.batch, p.stride_a, p.stride_b, p.stride_c, align_a, align_b, align_c, align_d,
                       bias_key, candidates};
  auto it = state.plans.find(key);
  if (it != state.plans.end()) return it->second;

  Plan plan{};
  LRSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  LRSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LRSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (p.bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = cuda_type(p.bias_type);
    LRSA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    LRSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                     sizeof(bias_type)));
  }
  // Stored (pre-transpose) shapes; leading dimension = stored rows (dense column-major).
  plan.a = p.trans_a ? make_layout(p.ab_type, p.k, p.m, p.batch, p.stride_a) : make_layout(p.ab_type, p.m, p.k, p.batch, p.stride_a);
  plan.b = p.trans_b ? make_layout(p.ab_type, p.n, p.k, p.batch, p.stride_b) : make_layout(p.ab_type, p.k, p.n, p.batch, p.stride_b);
  plan.c = make_layout(p.c_type, p.m, p.n, p.batch, p.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  LRSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace_bytes = kWorkspaceBytes;
  LRSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &workspace_bytes, sizeof(workspace_bytes)));
  const uint32_t aligns[4] = {uint32_t(align_a), uint32_t(align_b), uint32_t(align_c), uint32_t(align_d)};
  const cublasLtMatmulPreferenceAttributes_t align_attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    LRSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof(aligns[i])));

  cublasLtMatmulHeuristicResult_t results[ops::kMaxGemmCandidates] = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref,
                                                               candidates, results, &found);
  LRSA_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (status != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("matmul: cuBLASLt has no algorithm for {} x {} x {} (batch {}, {} inputs, {} output, {} bias, alignments "
         "{}/{}/{}/{}): {}",
         p.m, p.n, p.k, p.batch, dtype_name(p.ab_type), dtype_name(p.c_type),
         p.bias != nullptr ? dtype_name(p.bias_type) : "no", align_a, align_b, align_c, align_d,
         cublasLtGetStatusString(status));
  plan.algo = found == 1 ? results[0].algo : fastest_algo(handle, plan, p, alpha, beta, results, found, workspace);
  return state.plans.emplace(key, plan).first->second;
}

void run_lt(const LtProblem& p, float alpha, float beta) {
  LtState& state = lt_state();
  cudaStream_t stream = current_stream();
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  Plan plan{};
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    const int device = current_device_index();
    cublasLtHandle_t& h = state.handles[device];
    if (h == nullptr) LRSA_CUBLAS_CHECK(cublasLtCreate(&h));
    handle = h;
    // One workspace per stream: two threads (streams) must never share scratch memory.
    void*& ws = state.workspaces[stream];
    if (ws == nullptr) ws = allocator_for(Device::cuda(device)).allocate(kWorkspaceBytes);
    workspace = ws;
    plan = plan_for(state, handle, p, alpha, beta, workspace);
    // The bias pointer lives in the shared descriptor: set it and launch under the lock.
    if (p.bias != nullptr)
      LRSA_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
    LRSA_CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, p.a, plan.a, p.b, plan.b, &beta, p.c, plan.c, p.d,
                                     plan.c, &plan.algo, workspace, kWorkspaceBytes, stream));
  }
}

// Product of the dimensions before the last two (1 for a matrix).
int64_t batch_of(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 0; d + 2 < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha, float beta) {
  const char* op = "matmul";
  check_tensor(a, op, "a", {DType::F32, DType::BF16});
  check_tensor(b, op, "b", {a.dtype()});
  check_tensor(c, op, "c", {DType::F32, DType::BF16});
  use_device(c);
  LRSA_CHECK(a.dim() >= 2 && b.dim() >= 2 && c.dim() >= 2, "matmul: a {}, b {} and c {} must have >= 2 dimensions",
             a.describe(), b.describe(), c.describe());
  // op(A) [M, K], op(B) [K, N], C [M, N]
  const int64_t M = trans_a ? a.size(-1) : a.size(-2), K = trans_a ? a.size(-2) : a.size(-1);
  const int64_t Kb = trans_b ? b.size(-1) : b.size(-2), N = trans_b ? b.size(-2) : b.size(-1);
  const int64_t batch = batch_of(c);
  const bool a_shared = a.dim() == 2, b_shared = b.dim() == 2;
  LRSA_CHECK(K == Kb && c.size(-2) == M && c.size(-1) == N && (a_shared || batch_of(a) == batch) &&
                 (b_shared || batch_of(b) == batch),
             "matmul: shapes do not agree: a {} (trans {}), b {} (trans {}), c {}", a.describe(), int(trans_a),
             b.describe(), int(trans_b), c.describe());
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {  // empty sum: C = beta * C, where beta == 0 must not read C (it may hold NaN)
    if (beta == 0.0f) fill(c, 0.0);
    else scale_(c, beta);
    return;
  }
  if (a.dtype() == DType::F32 && c.dtype() == DType::BF16) {
    // cuBLASLt has no f32 x f32 -> bf16 kernel: accumulate in an f32 copy and round once.
    Tensor c32 = Tensor::empty(c.shape(), DType::F32, c.device());
    if (beta != 0.0f) copy_strided(c32, c);
    matmul(a, b, c32, trans_a, trans_b, alpha, beta);
    copy_strided(c, c32);
    return;
  }
  // A batched, untransposed A against a shared B is one product with batch * M rows.
  const bool fold = !a_shared && b_shared && !trans_a;
  const int64_t rows = fold ? batch * M : M, lt_batch = fold ? 1 : batch;
  const LtProblem p{.ab_type = a.dtype(), .c_type = c.dtype(), .trans_a = trans_b, .trans_b = trans_a,
                    .m = N, .n = rows, .k = K, .batch = lt_batch,
                    .stride_a = b_shared ? 0 : K * N, .stride_b = a_shared ? 0 : rows * K, .stride_c = rows * N,
                    .a = b.data(), .b = a.data(), .c = c.data(), .d = c.data()};
  run_lt(p, alpha, beta);
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual, Tensor& y) {
  use_device(y);
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  if (rows == 0 || out == 0) return;
  if (x.dtype() == DType::F32 && y.dtype() == DType::BF16) {
    // No f32 x f32 -> bf16 kernel: sum in f32 and round once.
    Tensor y32 = Tensor::empty(y.shape(), DType::F32, y.device());
    linear_forward(x, w, bias, residual.defined() ? residual.to(DType::F32) : residual, y32);
    copy_strided(y, y32);
    return;
  }
  // The epilogue reads the bias in y's type, from a 16-byte aligned address.
  Tensor epilogue_bias = bias;
  if (bias.defined() && (bias.dtype() != y.dtype() || pointer_alignment(bias.data()) < 16)) {
    epilogue_bias = Tensor::empty({out}, y.dtype(), y.device());
    copy_strided(epilogue_bias, bias);
  }
  // Row-major y [rows, out] = x [rows, in] @ W^T is column-major y^T [out, rows] = op(W') @ x',
  // where W' (column-major [in, out]) is our W and is transposed, and x' [in, rows] is our x.
  const LtProblem p{.ab_type = x.dtype(), .c_type = y.dtype(), .trans_a = true, .trans_b = false,
                    .m = out, .n = rows, .k = in, .batch = 1,
                    .a = w.data(), .b = x.data(), .c = residual.defined() ? residual.data() : y.data(), .d = y.data(),
                    .bias = epilogue_bias.defined() ? epilogue_bias.data() : nullptr, .bias_type = y.dtype()};
  run_lt(p, 1.0f, residual.defined() ? 1.0f : 0.0f);
}

// dbias [C] = (or +=) column sums of dy [N, C].
void bias_backward(const Tensor& dy, Tensor& dbias, ops::GradWrite write) {
  const char* op = "bias_backward";
  check_tensor(dy, op, "dy", {DType::F32, DType::BF16});
  check_tensor(dbias, op, "dbias", {DType::F32, DType::BF16});
  use_device(dy);
  const int64_t cols = dbias.numel();
  LRSA_CHECK(dy.dim() >= 1 && dy.size(-1) == cols, "bias_backward: dbias {} does not match the last dimension of dy {}",
             dbias.describe(), dy.describe());
  if (cols == 0) return;
  column_sums_into(dy.view({-1, cols}), dbias, write);
}

}  // namespace lrsa::cuda
