#include "lrsa/core/op_profiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#ifdef LRSA_WITH_CUDA
#include "lrsa/core/cuda_backend.h"
#endif

namespace lrsa::profiler {

bool enabled() {
  static const bool on = [] {
    const char* value = std::getenv("LRSA_PROFILE_OPS");
    return value != nullptr && std::string(value) == "1";
  }();
  return on;
}

#ifdef LRSA_WITH_CUDA
namespace {

struct Record {
  const char* name;
  cudaEvent_t start, stop;
};

// Resolved records are folded into totals so a long run keeps a bounded number of events.
constexpr size_t kResolveEvery = 8192;

struct State {
  std::mutex mutex;
  std::vector<Record> pending;
  std::vector<cudaEvent_t> free_events;
  std::map<std::string, std::pair<int64_t, double>> totals;  // name -> (calls, ms)
  cudaEvent_t first_start = nullptr, last_stop = nullptr;    // span of everything recorded

  cudaEvent_t take_event() {
    if (free_events.empty()) {
      cudaEvent_t e;
      LRSA_CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = free_events.back();
    free_events.pop_back();
    return e;
  }
  // Folds pending records into totals; their events return to the pool except the span's ends.
  void resolve() {
    for (Record& r : pending) {
      LRSA_CUDA_CHECK(cudaEventSynchronize(r.stop));
      float ms = 0;
      LRSA_CUDA_CHECK(cudaEventElapsedTime(&ms, r.start, r.stop));
      auto& t = totals[r.name];
      t.first += 1;
      t.second += ms;
      if (r.start != first_start) free_events.push_back(r.start);
      if (r.stop != last_stop) free_events.push_back(r.stop);
    }
    pending.clear();
  }
};

State& state() {
  static State s;
  return s;
}
thread_local int t_depth = 0;

}  // namespace

OpScope::OpScope(const char* name) {
  if (!enabled() || t_depth++ > 0) return;
  State& s = state();
  std::lock_guard lock(s.mutex);
  if (s.pending.size() >= kResolveEvery) s.resolve();
  Record r{name, s.take_event(), s.take_event()};
  LRSA_CUDA_CHECK(cudaEventRecord(r.start, cuda::current_stream()));
  if (!s.first_start) s.first_start = r.start;
  record_ = int(s.pending.size());
  s.pending.push_back(r);
}

OpScope::~OpScope() {
  if (!enabled()) return;
  --t_depth;
  if (record_ < 0) return;
  State& s = state();
  std::lock_guard lock(s.mutex);
  cudaEvent_t stop = s.pending[size_t(record_)].stop;
  if (cudaEventRecord(stop, cuda::current_stream()) == cudaSuccess) s.last_stop = stop;
}

void reset() {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.resolve();
  if (s.first_start) s.free_events.push_back(s.first_start);
  if (s.last_stop && s.last_stop != s.first_start) s.free_events.push_back(s.last_stop);
  s.first_start = s.last_stop = nullptr;
  s.totals.clear();
}

std::string report() {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.resolve();
  if (s.totals.empty() || !s.first_start || !s.last_stop) return "";
  float span_ms = 0;
  LRSA_CUDA_CHECK(cudaEventElapsedTime(&span_ms, s.first_start, s.last_stop));
  std::vector<std::pair<std::string, std::pair<int64_t, double>>> rows(s.totals.begin(), s.totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  double busy = 0;
  std::string out = fmt::format("{:<28} {:>8} {:>12} {:>7}\n", "op (GPU time)", "calls", "ms", "share");
  for (const auto& [name, t] : rows) {
    busy += t.second;
    out += fmt::format("{:<28} {:>8} {:>12.2f} {:>6.1f}%\n", name, t.first, t.second, 100.0 * t.second / span_ms);
  }
  out += fmt::format("{:<28} {:>8} {:>12.2f} {:>6.1f}%\n", "no profiled op running", "", span_ms - busy,
                     100.0 * (span_ms - busy) / span_ms);
  out += fmt::format("{:<28} {:>8} {:>12.2f}\n", "GPU span", "", double(span_ms));
  return out;
}

#else  // a CPU-only build records nothing

OpScope::OpScope(const char*) {}
OpScope::~OpScope() {}
void reset() {}
std::string report() { return ""; }

#endif

}  // namespace lrsa::profiler
