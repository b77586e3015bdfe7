#pragma once
// How an op writes a weight gradient. Overwrite sets it to this call's gradient and never reads
// the old values (they may be garbage): the first micro-batch of a step needs no pass zeroing
// the f32 gradients (4 bytes per parameter) and no read of them. Accumulate adds to it: later
// micro-batches, and further contributions to one tensor (a tied embedding).

namespace lrsa::ops {

enum class GradWrite { Overwrite, Accumulate };

}  // namespace lrsa::ops
