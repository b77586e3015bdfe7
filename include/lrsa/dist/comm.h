#pragma once
// The process group of a data-parallel run. Launched by Open MPI's mpirun, each process is one
// rank; without mpirun the run is one process and MPI is never initialized (world size 1).
//
// Every wait on another rank polls with a deadline (Comm::timeout_s): a rank that died or
// stalled makes the others stop with a message naming the operation and this rank, through
// MPI_Abort (which ends every rank of the job), instead of hanging forever. A rank that fails
// with an error calls abort() itself, naming itself.
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "lrsa/dist/launch.h"

namespace lrsa::dist {

// Whether this build can run more than one process (MPI found by CMake).
bool mpi_available();
bool nccl_available();

class Comm {
 public:
  // The process group of this process: MPI_COMM_WORLD when launched by mpirun (MPI is
  // initialized on first use and finalized at exit), else a group of one.
  static Comm& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  bool is_root() const { return rank_ == 0; }
  bool multi() const { return size_ > 1; }

  // Seconds any one wait on other ranks may take before the job is aborted.
  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double seconds) { timeout_s_ = seconds; }

  // Collectives over host values; `what` names the operation in timeout messages.
  void barrier(std::string_view what);
  void allreduce_sum(std::span<double> values, std::string_view what);
  bool all_true(bool value, std::string_view what);  // logical AND over ranks
  std::string broadcast(std::string value, int root, std::string_view what);
  void broadcast_bytes(void* data, int64_t bytes, int root, std::string_view what);

  // Polls `done` until it returns true, aborting the job after timeout_s (`what` and this rank
  // in the message). `done` may throw to report an asynchronous error (NCCL's).
  void wait(const std::function<bool()>& done, std::string_view what);

  // Logs "rank R: message" and ends every rank of the job (MPI_Abort); exits when single.
  [[noreturn]] void abort(const std::string& message, int exit_code = 1);

  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

 private:
  Comm();
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  double timeout_s_ = 600.0;
  bool initialized_mpi_ = false;
};

}  // namespace lrsa::dist
