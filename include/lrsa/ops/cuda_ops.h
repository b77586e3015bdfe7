#pragma once
// CUDA implementations of the runtime ops (kernels/ops_*.cu). Same contracts as the public
// headers in this folder; the public functions validate arguments and dispatch here.
#ifdef LRSA_WITH_CUDA
#include <vector>

#include "lrsa/ops/cross_entropy.h"
#include "lrsa/ops/grad_write.h"
#include "lrsa/ops/optimizer.h"

namespace lrsa::cuda {

// cuBLASLt: C = alpha * op(A) @ op(B) + beta * C, batched as in ops::matmul.
void matmul(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha, float beta);
// y = x @ W^T + bias + residual in one cuBLASLt call (bias and residual may be undefined).
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual, Tensor& y);
// dbias = (or +=) column sums of dy.
void bias_backward(const Tensor& dy, Tensor& dbias, ops::GradWrite write);

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw,
                      ops::GradWrite dw_write, const Tensor& residual);
void rope_apply(Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool inverse);
void swiglu_forward(const Tensor& gate_up, Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& gate_up, Tensor& dgate_up);
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void scale_(Tensor& x, float s);
void cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale, Tensor& nll, Tensor* dlogits);
void adamw_step(const std::vector<ops::AdamWTensors>& tensors, const ops::AdamWConfig& config, float grad_scale);
double global_grad_norm(const std::vector<Tensor>& grads);
// Sum of a device f32 vector, returned to the host (used for loss sums).
double sum_to_host(const Tensor& x);

}  // namespace lrsa::cuda
#endif
