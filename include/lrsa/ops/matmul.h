#pragma once
// Matrix products with fp32 accumulation. Shapes (row-major, contiguous):
//   op(A) [..., M, K], op(B) [..., K, N], C [..., M, N], op(X) = X^T when trans_x.
// A batch dimension (leading dims) must agree between A, B and C, or A or B may be 2-D and shared
// by every batch entry. A and B share one dtype (f32 or bf16); C is f32 or bf16.
#include "lrsa/core/tensor.h"
#include "lrsa/ops/grad_write.h"

namespace lrsa::ops {

// C = alpha * op(A) @ op(B) + beta * C (beta = 1 accumulates, e.g. into an f32 gradient).
void matmul(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a = false, bool trans_b = false,
            float alpha = 1.0f, float beta = 0.0f);

// Backward of C = op(A) @ op(B): dA and dB (each skipped when undefined) are accumulated with
// beta_a / beta_b (0 overwrites).
void matmul_backward(const Tensor& dc, const Tensor& a, const Tensor& b, Tensor& da, Tensor& db,
                     bool trans_a = false, bool trans_b = false, float beta_a = 0.0f, float beta_b = 0.0f);

// Linear layer in the Hugging Face layout: y [N, out] = x [N, in] @ W^T [in, out] + bias [out]
// + residual [N, out], summed in fp32 and rounded once (on CUDA in the GEMM's epilogue, which
// reads the bias in y's type). bias and residual may be undefined; residual may be y itself.
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    const Tensor& residual = Tensor());

// dx = dy @ W (overwritten; skipped when undefined); dw (+)= dy^T @ x and dbias (+)= sum_rows(dy),
// written as `write` says (skipped when undefined).
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw, Tensor& dbias,
                     GradWrite write);

// How matmul and linear_forward choose a cuBLASLt algorithm on CUDA, once per shape, dtypes and
// alignments: 1 takes cuBLASLt's first heuristic choice; N > 1 times its first N candidates on the
// problem and keeps the fastest (a little faster, docs/benchmarks.md, but two processes may rank
// near-equal algorithms differently, and the algorithm sets the order of the sums: runs are then
// not bitwise reproducible from one process to the next). LRSA_GEMM_CANDIDATES=N, when set,
// overrides the setting. The CPU products do not depend on it.
constexpr int kMaxGemmCandidates = 16;
constexpr int kTrainingGemmCandidates = 8;  // what training times, unless precision.deterministic
void set_gemm_candidates(int n);  // 1 .. kMaxGemmCandidates; the default is 1
int gemm_candidates();            // the count in force (the environment's, else the setting)

}  // namespace lrsa::ops
