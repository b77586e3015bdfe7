#pragma once
// GPU time per op, to see where a training step's time goes on machines without Nsight Systems.
// Off unless the environment sets LRSA_PROFILE_OPS=1. When on, every CUDA op entered through
// LRSA_DISPATCH_CUDA (core/dispatch.h) is bracketed by two CUDA events on the current stream;
// nested ops count towards the outermost one only. The events serialize nothing, so step times
// stay representative; resolving them (report) synchronizes.
#include <string>

namespace lrsa::profiler {

bool enabled();

// Brackets one op; does nothing when profiling is off, on a CPU tensor, or inside another op.
class OpScope {
 public:
  explicit OpScope(const char* name);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  int record_ = -1;  // index of this op's record; -1 = not recorded
};

// Forgets everything recorded so far (e.g. the warm-up step).
void reset();

// A table of GPU time per op (calls, total ms, share of the GPU span) plus the span from the
// first op's start to the last op's end and the time inside it when no profiled op ran.
// Empty when nothing was recorded.
std::string report();

}  // namespace lrsa::profiler
