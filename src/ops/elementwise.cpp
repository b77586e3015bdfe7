#include "lrsa/ops/elementwise.h"

#include "lrsa/core/dispatch.h"
#include "ops/cpu_common.h"

namespace lrsa::ops {

namespace {

// The row layouts (row_layout) of an add's operands a, b and out, checked by check_add.
struct AddLayouts {
  RowLayout a, b, out;
};

AddLayouts check_add(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name,
                     const Tensor& out) {
  check_tensor(a, op, a_name, {DType::F32, DType::BF16}, false);
  check_tensor(b, op, b_name, {a.dtype()}, false);
  check_tensor(out, op, "out", {a.dtype()}, false);
  check_shape(b, op, b_name, a.shape());
  check_shape(out, op, "out", a.shape());
  check_same_device(op, {&a, &b, &out});
  // row_layout throws unless each operand is rows of contiguous elements.
  return {row_layout(a, op, a_name), row_layout(b, op, b_name), row_layout(out, op, "out")};
}

// out = a + b elementwise in fp32, rounded once (out may alias a or b). Each operand is rows of
// contiguous elements: contiguous, or a row-strided view.
void add_cpu(const Tensor& a, const Tensor& b, Tensor& out, const AddLayouts& l) {
  cpu::visit_float(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data_as<T>();
    const T* pb = b.data_as<T>();
    T* po = out.data_as<T>();
#pragma omp parallel for collapse(2) if (l.out.rows * l.out.width > cpu::kParallelElements)
    for (int64_t r = 0; r < l.out.rows; ++r) {
      for (int64_t i = 0; i < l.out.width; ++i) {
        cpu::store(po + r * l.out.stride, i, cpu::load(pa + r * l.a.stride, i) + cpu::load(pb + r * l.b.stride, i));
      }
    }
  });
}

}  // namespace

void add_(Tensor& y, const Tensor& x) {
  const AddLayouts layouts = check_add("add_", y, "y", x, "x", y);
  LRSA_DISPATCH_CUDA(y.device(), "add_", cuda::add(y, x, y));
  add_cpu(y, x, y, layouts);
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const AddLayouts layouts = check_add("add", a, "a", b, "b", out);
  LRSA_DISPATCH_CUDA(out.device(), "add", cuda::add(a, b, out));
  add_cpu(a, b, out, layouts);
}

void scale_(Tensor& x, float s) {
  check_tensor(x, "scale_", "x", {DType::F32, DType::BF16});
  LRSA_DISPATCH_CUDA(x.device(), "scale_", cuda::scale_(x, s));
  const int64_t n = x.numel();
  cpu::visit_float(x.dtype(), [&](auto tag) {
    auto* p = x.data_as<decltype(tag)>();
#pragma omp parallel for if (n > cpu::kParallelElements)
    for (int64_t i = 0; i < n; ++i) cpu::store(p, i, cpu::load(p, i) * s);
  });
}

}  // namespace lrsa::ops
