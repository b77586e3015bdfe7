#pragma once
// Host-side helpers shared by the op families (kernels/ops_common.cu).
#include <optional>

#include "lrsa/core/tensor.h"
#include "lrsa/ops/grad_write.h"

namespace lrsa::cuda {

// Deterministic column reductions (the bias gradient, RMSNorm's weight gradient): blocks sum
// fixed row ranges into fp32 partials [S, C]; one pass then adds the partials up in a fixed
// order, so the result does not depend on scheduling (no atomics).
// out [C] (f32 or bf16) = (or +=, by `write`) the sum over s = 0 .. S-1 of partials [S, C] (f32),
// in that order.
void sum_partials_into(const Tensor& partials, Tensor& out, ops::GradWrite write);
// out [C] = (or +=) the column sums of x [R, C] (f32 or bf16, contiguous).
void column_sums_into(const Tensor& x, Tensor& out, ops::GradWrite write);

// Throws (naming op, the tensor, the first offending position and value) unless every element
// of the device tensor indices (i32) lies in [0, limit) or equals `except`. Waits for the stream
// to read the verdict back: the price of a range check on data that lives on the device.
void check_indices(const char* op, const char* name, const Tensor& indices, int64_t limit,
                   std::optional<int32_t> except = std::nullopt);

}  // namespace lrsa::cuda
