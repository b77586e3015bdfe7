// Public attention entry points: validate, allocate outputs, compute the LRSA selection, then
// dispatch to the CUDA kernels or the CPU implementation (attention_cpu.cpp).
#include "attn/internal.h"
#include "lrsa/core/dispatch.h"
#ifdef LRSA_WITH_CUDA
#include "lrsa/attn/cuda_attn.h"
#endif

namespace lrsa::attn {
namespace detail {

void check_heads(const Tensor& t, const char* op, const char* name, int64_t T, int64_t H, int64_t D, DType dtype,
                 Device device) {
  LRSA_CHECK(t.defined(), "{}: {} is undefined", op, name);
  check_shape(t, op, name, {T, H, D});
  LRSA_CHECK(t.dtype() == dtype, "{}: {} must be {} like q/k/v, got {}", op, name, dtype_name(dtype), t.describe());
  LRSA_CHECK(t.device() == device, "{}: {} must be on {}, got {}", op, name, device.str(), t.describe());
  LRSA_CHECK(t.stride(2) == 1 && t.stride(1) == D && t.stride(0) >= H * D,
             "{}: {} must have its last two dimensions contiguous (strides [>= {}, {}, 1]), got {} with strides {}",
             op, name, H * D, D, t.describe(), shape_str(t.strides()));
}

AttnDims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const SeqLayout& layout) {
  LRSA_CHECK(k.defined() && k.dim() == 3, "{}: k must be [T, Hk, D], got {}", op,
             k.defined() ? k.describe() : "undefined");
  AttnDims dims;
  dims.T = k.size(0);
  dims.Hk = k.size(1);
  dims.D = k.size(2);
  dims.dtype = k.dtype();
  dims.device = k.device();
  LRSA_CHECK(dims.dtype == DType::F32 || dims.dtype == DType::BF16, "{}: k must be f32 or bf16, got {}", op,
             k.describe());
  LRSA_CHECK(dims.Hk >= 1 && dims.D >= 1, "{}: k has no heads or an empty head dimension: {}", op, k.describe());
  check_heads(k, op, "k", dims.T, dims.Hk, dims.D, dims.dtype, dims.device);
  check_heads(v, op, "v", dims.T, dims.Hk, dims.D, dims.dtype, dims.device);
  dims.Hq = dims.Hk;
  if (q.defined()) {
    LRSA_CHECK(q.dim() == 3 && q.size(0) == dims.T && q.size(2) == dims.D,
               "{}: q must be [T, Hq, D] = [{}, Hq, {}] like k, got {}", op, dims.T, dims.D, q.describe());
    dims.Hq = q.size(1);
    LRSA_CHECK(dims.Hq >= 1 && dims.Hq % dims.Hk == 0,
               "{}: q heads ({}) must be a positive multiple of k/v heads ({}) for GQA", op, dims.Hq, dims.Hk);
    check_heads(q, op, "q", dims.T, dims.Hq, dims.D, dims.dtype, dims.device);
  }
  layout.validate(op, dims.T, dims.device);
  return dims;
}

}  // namespace detail

namespace {

// Allocates `t` like q's [T, H, D] when undefined, else checks it can be written as such.
void prepare_heads(Tensor& t, const char* op, const char* name, int64_t H, const detail::AttnDims& dims) {
  if (!t.defined()) t = Tensor::empty({dims.T, H, dims.D}, dims.dtype, dims.device);
  detail::check_heads(t, op, name, dims.T, H, dims.D, dims.dtype, dims.device);
}

}  // namespace

void attention_forward(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                       const SeqLayout& layout, AttentionForward& result) {
  const char* op = "attention_forward";
  LRSA_CHECK(q.defined(), "{}: q is undefined", op);
  const detail::AttnDims dims = detail::check_qkv(op, q, k, v, layout);
  result.selection = config.mode == Mode::Lrsa ? lrsa_select(k, v, layout, config.lrsa) : LrsaSelection{};
  prepare_heads(result.out, op, "result.out", dims.Hq, dims);
  if (!result.lse.defined()) result.lse = Tensor::empty({dims.Hq, dims.T}, DType::F32, dims.device);
  check_tensor(result.lse, op, "result.lse", {DType::F32});
  check_shape(result.lse, op, "result.lse", {dims.Hq, dims.T});
  LRSA_CHECK(result.lse.device() == dims.device, "{}: result.lse must be on {}, got {}", op, dims.device.str(),
             result.lse.describe());
  LRSA_DISPATCH_CUDA(dims.device, op, cuda::attention_forward(config, q, k, v, layout, result));
  detail::attention_forward_cpu(config, q, k, v, layout, result);
}

void attention_backward(const AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const SeqLayout& layout, const AttentionForward& saved, const Tensor& dout, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  LRSA_CHECK(q.defined(), "{}: q is undefined", op);
  const detail::AttnDims dims = detail::check_qkv(op, q, k, v, layout);
  detail::check_heads(saved.out, op, "saved.out", dims.T, dims.Hq, dims.D, dims.dtype, dims.device);
  detail::check_heads(dout, op, "dout", dims.T, dims.Hq, dims.D, dims.dtype, dims.device);
  check_tensor(saved.lse, op, "saved.lse", {DType::F32});
  check_shape(saved.lse, op, "saved.lse", {dims.Hq, dims.T});
  LRSA_CHECK(saved.lse.device() == dims.device, "{}: saved.lse must be on {}, got {}", op, dims.device.str(),
             saved.lse.describe());
  if (config.mode == Mode::Lrsa) {
    config.lrsa.validate();
    detail::check_selection(op, saved.selection, layout, config.lrsa, dims.Hk, dims.device);
  }
  prepare_heads(dq, op, "dq", dims.Hq, dims);
  prepare_heads(dk, op, "dk", dims.Hk, dims);
  prepare_heads(dv, op, "dv", dims.Hk, dims);
  LRSA_DISPATCH_CUDA(dims.device, op, cuda::attention_backward(config, q, k, v, layout, saved, dout, dq, dk, dv));
  detail::attention_backward_cpu(config, q, k, v, layout, saved, dout, dq, dk, dv);
}

}  // namespace lrsa::attn
