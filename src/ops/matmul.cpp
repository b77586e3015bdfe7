#include "lrsa/ops/matmul.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "lrsa/core/dispatch.h"
#include "lrsa/ops/elementwise.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

// ---------------------------------------------------------------------------------------------
// CPU GEMM, GotoBLAS structure. C is computed in column slabs of up to NC columns. For each slab
// all of op(B)[:, slab] is packed first (f32, NR-column micro-panels per KC-deep slice, shared by
// the threads); then the threads take row blocks dynamically, and for each KC slice pack their
// MC x KC block of op(A) (f32, MR-row micro-panels) and run the MR x NR register kernel over it.
// Packing converts bf16 to f32 and absorbs the transposes, so one kernel serves every case.
// Threads meet only twice per slab (after packing B, after the row blocks): on shared CI cores a
// barrier can wait a whole scheduler time slice. Sizes: an A block (MC x KC = 120 KiB) stays in
// L2, a B micro-panel (KC x NR = 16 KiB) in L1, a B slice (KC x NC = 2 MiB) in L3.
constexpr int64_t kMR = 6, kNR = 16;
constexpr int64_t kKC = 256, kMCMax = 120, kNC = 2048;
constexpr int64_t kSlabFloats = int64_t(4) << 20;  // packed B slab <= 16 MiB: narrower slabs for large K
static_assert(kMCMax % kMR == 0 && kNC % kNR == 0);

// GCC/Clang vector extensions: the compiler emits AVX2/FMA (or SSE) for the selected clone. They
// may alias float (like __m256) and the unaligned variant is for C rows.
typedef float v8f __attribute__((vector_size(32), may_alias));
typedef float v8f_unaligned __attribute__((vector_size(32), may_alias, aligned(4)));

#if defined(__x86_64__) && defined(__GNUC__)
#define LRSA_KERNEL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LRSA_KERNEL_CLONES
#endif

// c[MR x NR] (row stride ldc) = alpha * ap @ bp + beta * c. ap: kc x MR (k-major), bp: kc x NR
// (k-major, 32-byte aligned). beta == 0 never reads c (BLAS semantics: c may hold garbage/NaN).
LRSA_KERNEL_CLONES
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, float* __restrict c,
                  int64_t ldc, float alpha, float beta) {
  v8f acc[kMR][2] = {};  // 12 accumulators + 2 B vectors + 1 broadcast fit the 16 AVX registers
  for (int64_t p = 0; p < kc; ++p) {
    const v8f b0 = *reinterpret_cast<const v8f*>(bp + p * kNR);
    const v8f b1 = *reinterpret_cast<const v8f*>(bp + p * kNR + 8);
    for (int64_t r = 0; r < kMR; ++r) {
      const float a = ap[p * kMR + r];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int64_t r = 0; r < kMR; ++r) {
    v8f_unaligned* row = reinterpret_cast<v8f_unaligned*>(c + r * ldc);
    if (beta == 0.0f) {
      row[0] = alpha * acc[r][0];
      row[1] = alpha * acc[r][1];
    } else {
      row[0] = alpha * acc[r][0] + beta * row[0];
      row[1] = alpha * acc[r][1] + beta * row[1];
    }
  }
}

// dst[k * width + r] = src[r * row_stride + k * k_stride] for r < rows (zero for rows <= r <
// width), k < kc: one micro-panel of op(A) (width MR) or op(B) (width NR), converted to f32.
template <typename T>
void pack_panel(const T* src, int64_t row_stride, int64_t k_stride, int64_t rows, int64_t width, int64_t kc,
                float* dst) {
  if (k_stride == 1) {  // source rows are contiguous along k: read them in order
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < kc; ++k) dst[k * width + r] = cpu::load(src + r * row_stride, k);
  } else {
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = 0; r < rows; ++r) dst[k * width + r] = cpu::load(src + k * k_stride, r * row_stride);
  }
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t r = rows; r < width; ++r) dst[k * width + r] = 0.0f;
}

// One 2-D product C[M, N] = alpha * op(A)[M, K] @ op(B)[K, N] + beta * C. Strides in elements:
// op(A)(i, k) = a[i * a_rs + k * a_ks], op(B)(k, j) = b[j * b_cs + k * b_ks], C(i, j) = c[i * ldc + j].
template <typename TA, typename TC>
struct Gemm {
  const TA* a;
  int64_t a_rs, a_ks;
  const TA* b;
  int64_t b_cs, b_ks;
  TC* c;
  int64_t ldc;
  int64_t M, N, K;
  float alpha, beta;

  void run() const {
    if (M == 0 || N == 0) return;
    if (K == 0) {  // empty sum: C = beta * C
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j)
          cpu::store(c, i * ldc + j, beta == 0.0f ? 0.0f : beta * cpu::load(c, i * ldc + j));
      return;
    }
    const bool parallel = double(M) * double(N) * double(K) > double(1 << 18);
    const int64_t threads = parallel ? omp_get_max_threads() : 1;
    // Row blocks: a multiple of the thread count and at least 4 per thread, so that the dynamic
    // schedule keeps every thread busy even when one of them is slowed (shared CI cores).
    int64_t blocks = std::max((M + kMCMax - 1) / kMCMax, 4 * threads);
    blocks = (blocks + threads - 1) / threads * threads;
    const int64_t mc = std::min(kMCMax, ((M + blocks - 1) / blocks + kMR - 1) / kMR * kMR);
    const int64_t row_blocks = (M + mc - 1) / mc;
    const int64_t kc_max = std::min(kKC, K), k_blocks = (K + kKC - 1) / kKC;
    const int64_t nc_max = std::min({kNC, (N + kNR - 1) / kNR * kNR, std::max(16 * kNR, kSlabFloats / K / kNR * kNR)});

    // Scratch (counted by the CPU allocator): the packed B slab, and per thread an A block plus,
    // for a bf16 C, an f32 tile that holds a row block's sums over K so that C is rounded once.
    constexpr bool c_is_f32 = std::is_same_v<TC, float>;
    const int64_t per_thread = mc * kc_max + (c_is_f32 ? 0 : mc * nc_max);
    Tensor scratch = Tensor::empty({K * nc_max + threads * per_thread}, DType::F32);
    float* bpack = scratch.data_as<float>();

#pragma omp parallel num_threads(int(threads)) if (parallel)
    {
      float* apack = bpack + K * nc_max + int64_t(omp_get_thread_num()) * per_thread;
      float* sums = apack + mc * kc_max;  // bf16 C only
      for (int64_t jc = 0; jc < N; jc += nc_max) {
        const int64_t nc = std::min(nc_max, N - jc), col_panels = (nc + kNR - 1) / kNR, ncr = col_panels * kNR;
        // Slice kb of the slab starts at kb * KC * ncr; its panel q at q * NR * kc within it.
#pragma omp for collapse(2) schedule(static)
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          for (int64_t q = 0; q < col_panels; ++q) {
            const int64_t pc = kb * kKC, kc = std::min(kKC, K - pc), j0 = jc + q * kNR;
            pack_panel(b + j0 * b_cs + pc * b_ks, b_cs, b_ks, std::min(kNR, N - j0), kNR, kc,
                       bpack + pc * ncr + q * kNR * kc);
          }
        }
#pragma omp for schedule(dynamic)
        for (int64_t blk = 0; blk < row_blocks; ++blk) {
          const int64_t i0 = blk * mc, mb = std::min(mc, M - i0);
          // The kernel writes C itself (f32) or the f32 sums (bf16 C: alpha applied, beta below).
          float* dst;
          int64_t ldd;
          float dst_beta;
          if constexpr (c_is_f32) {
            dst = c + i0 * ldc + jc;
            ldd = ldc;
            dst_beta = beta;
          } else {
            dst = sums;
            ldd = ncr;
            dst_beta = 0.0f;
          }
          for (int64_t pc = 0; pc < K; pc += kKC) {
            const int64_t kc = std::min(kKC, K - pc);
            const float kernel_beta = pc == 0 ? dst_beta : 1.0f;
            for (int64_t r = 0; r < mb; r += kMR)
              pack_panel(a + (i0 + r) * a_rs + pc * a_ks, a_rs, a_ks, std::min(kMR, mb - r), kMR, kc, apack + r * kc);
            for (int64_t q = 0; q < col_panels; ++q) {
              const float* bp = bpack + pc * ncr + q * kNR * kc;
              const int64_t nr = std::min(kNR, nc - q * kNR);
              for (int64_t r = 0; r < mb; r += kMR) {
                const int64_t mr = std::min(kMR, mb - r);
                float* d = dst + r * ldd + q * kNR;
                if (mr == kMR && nr == kNR) {
                  micro_kernel(kc, apack + r * kc, bp, d, ldd, alpha, kernel_beta);
                  continue;
                }
                // Edge tile: run the full kernel on a local tile, copy the valid part.
                alignas(32) float tile[kMR * kNR] = {};
                if (kernel_beta != 0.0f)
                  for (int64_t i = 0; i < mr; ++i) std::memcpy(tile + i * kNR, d + i * ldd, size_t(nr) * sizeof(float));
                micro_kernel(kc, apack + r * kc, bp, tile, kNR, alpha, kernel_beta);
                for (int64_t i = 0; i < mr; ++i) std::memcpy(d + i * ldd, tile + i * kNR, size_t(nr) * sizeof(float));
              }
            }
          }
          if constexpr (!c_is_f32) {
            for (int64_t i = 0; i < mb; ++i)
              for (int64_t j = 0; j < nc; ++j) {
                const int64_t ci = (i0 + i) * ldc + jc + j;
                const float old = beta == 0.0f ? 0.0f : beta * cpu::load(c, ci);
                cpu::store(c, ci, sums[i * ldd + j] + old);
              }
          }
        }
      }
    }
  }
};

// Leading (batch) dimensions of a tensor with at least two dimensions, flattened.
int64_t batch_of(const Tensor& t) { return t.numel() == 0 ? 0 : t.numel() / (t.size(-2) * t.size(-1)); }
Shape batch_shape(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

template <typename TA, typename TC>
void matmul_cpu(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha, float beta) {
  const int64_t M = c.size(-2), N = c.size(-1), K = trans_a ? a.size(-2) : a.size(-1);
  const int64_t lda = a.size(-1), ldb = b.size(-1);
  const int64_t batch = batch_of(c);
  const bool a_shared = a.dim() == 2 && c.dim() > 2, b_shared = b.dim() == 2 && c.dim() > 2;
  Gemm<TA, TC> g{a.data_as<TA>(), trans_a ? 1 : lda, trans_a ? lda : 1, b.data_as<TA>(), trans_b ? ldb : 1,
                 trans_b ? 1 : ldb, c.data_as<TC>(), N, M, N, K, alpha, beta};
  if (b_shared && !a_shared && !trans_a) {  // the batch stacks rows of A and C: one taller product
    g.M = batch * M;
    g.run();
    return;
  }
  for (int64_t i = 0; i < batch; ++i) {
    Gemm<TA, TC> gi = g;
    if (!a_shared) gi.a += i * M * K;
    if (!b_shared) gi.b += i * K * N;
    gi.c += i * M * N;
    gi.run();
  }
}

void check_matmul(const char* op, const Tensor& a, const Tensor& b, const Tensor& c, const char* c_name, bool trans_a,
                  bool trans_b) {
  check_tensor(a, op, "a", {DType::F32, DType::BF16});
  check_tensor(b, op, "b", {a.dtype()});
  check_tensor(c, op, c_name, {DType::F32, DType::BF16});
  check_same_device(op, {&a, &b, &c});
  LRSA_CHECK(a.dim() >= 2 && b.dim() >= 2 && c.dim() >= 2, "{}: operands need >= 2 dimensions, got a {}, b {}, {} {}",
             op, a.describe(), b.describe(), c_name, c.describe());
  const int64_t M = trans_a ? a.size(-1) : a.size(-2), Ka = trans_a ? a.size(-2) : a.size(-1);
  const int64_t Kb = trans_b ? b.size(-1) : b.size(-2), N = trans_b ? b.size(-2) : b.size(-1);
  LRSA_CHECK(Ka == Kb && c.size(-2) == M && c.size(-1) == N,
             "{}: shapes do not agree: op(a) [{}, {}] (a {}, trans_a={}), op(b) [{}, {}] (b {}, trans_b={}), {} {}", op,
             M, Ka, a.describe(), trans_a, Kb, N, b.describe(), trans_b, c_name, c.describe());
  const Shape batch = batch_shape(c);
  LRSA_CHECK(a.dim() == 2 || batch_shape(a) == batch,
             "{}: batch dimensions of a {} must match {} {} (or a must be 2-D)", op, a.describe(), c_name, c.describe());
  LRSA_CHECK(b.dim() == 2 || batch_shape(b) == batch,
             "{}: batch dimensions of b {} must match {} {} (or b must be 2-D)", op, b.describe(), c_name, c.describe());
}

// Accumulates into `grad` (the gradient of an operand shared by every batch entry) the sum over
// the batch of op(x_i) @ op(y_i): a loop of 2-D products, the first with `beta`.
void matmul_batch_sum(const Tensor& x, const Tensor& y, Tensor& grad, bool trans_x, bool trans_y, float beta) {
  const Tensor x3 = x.dim() == 2 ? x : x.reshape({-1, x.size(-2), x.size(-1)});
  const Tensor y3 = y.dim() == 2 ? y : y.reshape({-1, y.size(-2), y.size(-1)});
  const int64_t batch = x.dim() == 2 ? y3.size(0) : x3.size(0);
  for (int64_t i = 0; i < batch; ++i) {
    matmul(x.dim() == 2 ? x3 : x3.select(0, i), y.dim() == 2 ? y3 : y3.select(0, i), grad, trans_x, trans_y, 1.0f,
           i == 0 ? beta : 1.0f);
  }
}

// Gradient of one operand: grad = op(x) @ op(y) with the operand flags of matmul; when grad is
// 2-D and the product is batched, the batch entries are summed.
void grad_product(const Tensor& x, const Tensor& y, Tensor& grad, bool trans_x, bool trans_y, float beta) {
  if (grad.dim() == 2 && (x.dim() > 2 || y.dim() > 2)) {
    // Stacking the batch along the summed dimension turns the sum into one product, possible
    // when that dimension is the row dimension of both (x^T @ y with x, y row-stacked).
    if (trans_x && !trans_y && x.dim() > 2 && y.dim() > 2) {
      matmul(x.reshape({-1, x.size(-1)}), y.reshape({-1, y.size(-1)}), grad, true, false, 1.0f, beta);
    } else {
      matmul_batch_sum(x, y, grad, trans_x, trans_y, beta);
    }
    return;
  }
  matmul(x, y, grad, trans_x, trans_y, 1.0f, beta);
}

void add_bias_cpu(Tensor& y, const Tensor& bias) {
  const int64_t C = bias.numel(), rows = y.numel() / std::max<int64_t>(C, 1);
  cpu::visit_float(y.dtype(), [&](auto ty) {
    using TY = decltype(ty);
    cpu::visit_float(bias.dtype(), [&](auto tb) {
      using TB = decltype(tb);
      TY* yp = y.data_as<TY>();
      const TB* bp = bias.data_as<TB>();
#pragma omp parallel for if (y.numel() > cpu::kParallelElements)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < C; ++j) cpu::store(yp, r * C + j, cpu::load(yp, r * C + j) + cpu::load(bp, j));
    });
  });
}

// dbias[j] (+)= sum_r dy[r, j], rows summed in order (deterministic: threads split the columns).
void bias_backward_cpu(const Tensor& dy, Tensor& dbias, GradWrite write) {
  const int64_t C = dbias.numel(), rows = dy.numel() / std::max<int64_t>(C, 1);
  float* db = dbias.data_as<float>();
  cpu::visit_float(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = dy.data_as<T>();
    constexpr int64_t kCols = 64;
#pragma omp parallel for if (dy.numel() > cpu::kParallelElements)
    for (int64_t j0 = 0; j0 < C; j0 += kCols) {
      const int64_t j1 = std::min(C, j0 + kCols);
      float sum[kCols] = {};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = j0; j < j1; ++j) sum[j - j0] += cpu::load(g, r * C + j);
      for (int64_t j = j0; j < j1; ++j) db[j] = write == GradWrite::Accumulate ? db[j] + sum[j - j0] : sum[j - j0];
    }
  });
}

std::atomic<int> g_gemm_candidates{1};

// LRSA_GEMM_CANDIDATES, read once: 0 when unset.
int env_gemm_candidates() {
  static const int n = [] {
    const char* value = std::getenv("LRSA_GEMM_CANDIDATES");
    if (value == nullptr || *value == '\0') return 0;
    char* end = nullptr;
    const long v = std::strtol(value, &end, 10);
    if (*end != '\0' || v < 1 || v > kMaxGemmCandidates)
      fail("LRSA_GEMM_CANDIDATES={}: want a number of algorithms from 1 to {}", value, kMaxGemmCandidates);
    return int(v);
  }();
  return n;
}

}  // namespace

void set_gemm_candidates(int n) {
  LRSA_CHECK(n >= 1 && n <= kMaxGemmCandidates, "set_gemm_candidates: {} is not a number of algorithms from 1 to {}",
             n, kMaxGemmCandidates);
  g_gemm_candidates.store(n);
}

int gemm_candidates() {
  const int env = env_gemm_candidates();
  return env > 0 ? env : g_gemm_candidates.load();
}

void matmul(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha, float beta) {
  check_matmul("matmul", a, b, c, "c", trans_a, trans_b);
  LRSA_DISPATCH_CUDA(c.device(), "matmul", cuda::matmul(a, b, c, trans_a, trans_b, alpha, beta));
  cpu::visit_float(a.dtype(), [&](auto ta) {
    cpu::visit_float(c.dtype(), [&](auto tc) {
      matmul_cpu<decltype(ta), decltype(tc)>(a, b, c, trans_a, trans_b, alpha, beta);
    });
  });
}

// C = op(A) @ op(B):  dA = dC @ op(B)^T (stored transposed when trans_a: dA = op(B) @ dC^T),
//                     dB = op(A)^T @ dC (stored transposed when trans_b: dB = dC^T @ op(A)).
void matmul_backward(const Tensor& dc, const Tensor& a, const Tensor& b, Tensor& da, Tensor& db, bool trans_a,
                     bool trans_b, float beta_a, float beta_b) {
  check_matmul("matmul_backward", a, b, dc, "dc", trans_a, trans_b);
  if (da.defined()) {
    check_shape(da, "matmul_backward", "da", a.shape());
    if (!trans_a) {
      grad_product(dc, b, da, false, !trans_b, beta_a);
    } else {
      grad_product(b, dc, da, trans_b, true, beta_a);
    }
  }
  if (db.defined()) {
    check_shape(db, "matmul_backward", "db", b.shape());
    if (!trans_b) {
      grad_product(a, dc, db, !trans_a, false, beta_b);
    } else {
      grad_product(dc, a, db, true, trans_a, beta_b);
    }
  }
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Tensor& residual) {
  check_tensor(x, "linear_forward", "x", {DType::F32, DType::BF16});
  check_tensor(w, "linear_forward", "w", {x.dtype()});
  check_tensor(y, "linear_forward", "y", {DType::F32, DType::BF16});
  LRSA_CHECK(w.dim() == 2 && x.dim() >= 2 && x.size(-1) == w.size(1) && w.size(1) > 0,
             "linear_forward: need x [..., in] and w [out, in] with in > 0, got x {}, w {}", x.describe(),
             w.describe());
  Shape y_shape = x.shape();
  y_shape.back() = w.size(0);
  check_shape(y, "linear_forward", "y", y_shape);
  check_same_device("linear_forward", {&x, &w, &y});
  if (bias.defined()) {
    check_tensor(bias, "linear_forward", "bias", {DType::F32, DType::BF16});
    check_shape(bias, "linear_forward", "bias", {w.size(0)});
    check_same_device("linear_forward", {&y, &bias});
  }
  if (residual.defined()) {
    check_tensor(residual, "linear_forward", "residual", {y.dtype()});
    check_shape(residual, "linear_forward", "residual", y_shape);
    check_same_device("linear_forward", {&y, &residual});
  }
  LRSA_DISPATCH_CUDA(y.device(), "linear_forward", cuda::linear_forward(x, w, bias, residual, y));
  // ((x @ W^T) + bias) + residual in f32 (in y itself when y is f32 and not the residual), rounded
  // once.
  const bool in_place = y.dtype() == DType::F32 && !(residual.defined() && residual.data() == y.data());
  Tensor acc = in_place ? y : Tensor::empty(y_shape, DType::F32);
  Tensor acc2 = acc.view({-1, w.size(0)});
  matmul(x.view({-1, w.size(1)}), w, acc2, false, true);
  if (bias.defined()) add_bias_cpu(acc2, bias);
  if (residual.defined()) add_(acc, residual.to(DType::F32));
  if (!in_place) y.copy_(acc);
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw, Tensor& dbias,
                     GradWrite write) {
  check_tensor(dy, "linear_backward", "dy", {DType::F32, DType::BF16});
  check_tensor(x, "linear_backward", "x", {DType::F32, DType::BF16});
  check_tensor(w, "linear_backward", "w", {DType::F32, DType::BF16});
  LRSA_CHECK(w.dim() == 2 && x.dim() >= 2 && dy.dim() == x.dim(),
             "linear_backward: need w [out, in], x [..., in], dy [..., out], got w {}, x {}, dy {}", w.describe(),
             x.describe(), dy.describe());
  const Tensor dy2 = dy.view({-1, dy.size(-1)}), x2 = x.view({-1, x.size(-1)});
  if (dx.defined()) {
    check_shape(dx, "linear_backward", "dx", x.shape());
    Tensor dx2 = dx.view({-1, dx.size(-1)});
    matmul(dy2, w, dx2, false, false);
  }
  if (dw.defined()) matmul(dy2, x2, dw, true, false, 1.0f, write == GradWrite::Accumulate ? 1.0f : 0.0f);
  if (!dbias.defined()) return;
  check_tensor(dbias, "linear_backward", "dbias", {DType::F32});
  check_shape(dbias, "linear_backward", "dbias", {w.size(0)});
  check_same_device("linear_backward", {&dy, &dbias});
  LRSA_DISPATCH_CUDA(dy.device(), "linear_backward", cuda::bias_backward(dy2, dbias, write));
  bias_backward_cpu(dy2, dbias, write);
}

}  // namespace lrsa::ops
