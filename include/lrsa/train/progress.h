#pragma once
// Training progress: a live one-line bar on a terminal (step, loss, lr, tokens/s, MFU, memory,
// ETA), plain spdlog lines every logging.every_steps otherwise.
#include <chrono>
#include <cstdint>

#include "lrsa/train/config.h"

namespace lrsa::train {

struct StepRecord;

class ProgressReporter {
 public:
  ProgressReporter(const LoggingConfig& logging, int64_t max_steps, int64_t start_step);
  void update(const StepRecord& record, double mfu, int64_t peak_bytes);
  void finish();  // ends the bar's line

 private:
  bool bar_;
  int64_t every_, max_steps_, start_step_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool drawn_ = false;
};

}  // namespace lrsa::train
