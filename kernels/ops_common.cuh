#pragma once
// Host-side helpers shared by the op families (kernels/ops_common.cu).
#include <optional>

#include "lrsa/core/tensor.h"

namespace lrsa::cuda {

// Deterministic column reductions (the bias gradient, RMSNorm's weight gradient): blocks sum
// fixed row ranges into fp32 partials [S, C]; one pass then adds the partials to the output in
// a fixed order, so the result does not depend on scheduling (no atomics).
// out [C] (f32 or bf16) += sum over s = 0 .. S-1 of partials [S, C] (f32), in that order.
void accumulate_partials(const Tensor& partials, const Tensor& out);
// out [C] += column sums of x [R, C] (f32 or bf16, contiguous).
void accumulate_column_sums(const Tensor& x, const Tensor& out);

// Throws (naming op, the tensor, the first offending position and value) unless every element
// of the device tensor indices (i32) lies in [0, limit) or equals `except`. Waits for the stream
// to read the verdict back: the price of a range check on data that lives on the device.
void check_indices(const char* op, const char* name, const Tensor& indices, int64_t limit,
                   std::optional<int32_t> except = std::nullopt);

}  // namespace lrsa::cuda
