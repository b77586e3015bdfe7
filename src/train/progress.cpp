#include "lrsa/train/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>

#include "lrsa/train/trainer.h"

namespace lrsa::train {

ProgressReporter::ProgressReporter(const LoggingConfig& logging, int64_t max_steps, int64_t start_step)
    : every_(std::max<int64_t>(logging.every_steps, 1)), max_steps_(max_steps), start_step_(start_step) {
  bar_ = logging.progress == Progress::Bar || (logging.progress == Progress::Auto && ::isatty(::fileno(stderr)));
}

void ProgressReporter::update(const StepRecord& r, double mfu, int64_t peak_bytes) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = r.step - start_step_;
  const double eta = max_steps_ > 0 && done > 0 ? elapsed / double(done) * double(max_steps_ - r.step) : 0.0;
  const std::string mfu_text = mfu > 0 ? fmt::format(" mfu {:.1f}%", 100 * mfu) : "";
  const std::string text = fmt::format("step {}{} loss {:.4f} lr {:.2e} gnorm {:.3f} {:.0f} tok/s{} mem {:.2f} GiB eta {:.0f}s{}",
                                       r.step, max_steps_ > 0 ? fmt::format("/{}", max_steps_) : "", r.loss, r.lr,
                                       r.grad_norm, r.tokens_per_s, mfu_text, peak_bytes / 1073741824.0, eta,
                                       r.skipped ? " (skipped)" : "");
  if (bar_) {
    const int width = 24;
    const int filled = max_steps_ > 0 ? int(width * double(r.step) / double(max_steps_)) : 0;
    std::fprintf(stderr, "\r[%s%s] %s\x1b[K", std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), '.').c_str(), text.c_str());
    std::fflush(stderr);
    drawn_ = true;
  } else if (r.step % every_ == 0 || r.step == max_steps_ || r.skipped) {
    spdlog::info("{}", text);
  }
}

void ProgressReporter::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace lrsa::train
