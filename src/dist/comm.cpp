#include "lrsa/dist/comm.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <thread>

#include "lrsa/core/error.h"

#ifdef LRSA_WITH_MPI
#include <mpi.h>
#endif

namespace lrsa::dist {

namespace {

#ifdef LRSA_WITH_MPI
void mpi_check(int rc, std::string_view call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  fail("MPI {} failed: {}", call, std::string(text, size_t(length)));
}

// Polls one nonblocking request to completion under the group's deadline.
void wait_request(Comm& comm, MPI_Request& request, std::string_view what) {
  comm.wait([&] {
    int done = 0;
    mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
    return done != 0;
  }, what);
}
#endif

}  // namespace

bool mpi_available() {
#ifdef LRSA_WITH_MPI
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#ifdef LRSA_WITH_NCCL
  return true;
#else
  return false;
#endif
}

Comm& Comm::world() {
  static Comm comm;
  return comm;
}

Comm::Comm() {
  const Launch launch = detect_launch();
  if (!launch.under_mpirun) return;
#ifdef LRSA_WITH_MPI
  int provided = 0;
  mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  initialized_mpi_ = true;
  // Errors come back as codes (reported with the rank) rather than MPI's own abort.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  // The node-local rank picks the GPU: ranks sharing a host, by MPI itself.
  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  mpi_check(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
  MPI_Comm_free(&node);
#else
  LRSA_CHECK(launch.world == 1,
             "launched by mpirun with {} processes, but this lrsa-train was built without MPI (install libopenmpi-dev "
             "and reconfigure)", launch.world);
#endif
}

Comm::~Comm() {
#ifdef LRSA_WITH_MPI
  int finalized = 0;
  if (initialized_mpi_ && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
#endif
}

void Comm::wait(const std::function<bool()>& done, std::string_view what) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  for (int64_t polls = 0;; ++polls) {
    if (done()) return;
    const double waited = std::chrono::duration<double>(clock::now() - start).count();
    if (waited > timeout_s_)
      abort(fmt::format("{} did not complete within distributed.timeout_s = {:g} s: another rank has failed or "
                        "stalled (see its log); aborting the job", what, timeout_s_));
    // Spin briefly (collectives usually finish fast), then yield the core.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 50));
  }
}

void Comm::barrier(std::string_view what) {
  if (!multi()) return;
#ifdef LRSA_WITH_MPI
  MPI_Request request;
  mpi_check(MPI_Ibarrier(MPI_COMM_WORLD, &request), what);
  wait_request(*this, request, what);
#endif
}

void Comm::allreduce_sum(std::span<double> values, std::string_view what) {
  if (!multi() || values.empty()) return;
#ifdef LRSA_WITH_MPI
  MPI_Request request;
  mpi_check(MPI_Iallreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &request),
            what);
  wait_request(*this, request, what);
#endif
}

bool Comm::all_true(bool value, std::string_view what) {
  double failures = value ? 0.0 : 1.0;
  allreduce_sum(std::span<double>(&failures, 1), what);
  return failures == 0.0;
}

void Comm::broadcast_bytes(void* data, int64_t bytes, int root, std::string_view what) {
  if (!multi() || bytes == 0) return;
#ifdef LRSA_WITH_MPI
  LRSA_CHECK(bytes <= INT32_MAX, "broadcast of {} bytes: too large for one MPI call", bytes);
  MPI_Request request;
  mpi_check(MPI_Ibcast(data, int(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &request), what);
  wait_request(*this, request, what);
#else
  (void)data, (void)root, (void)what;
#endif
}

std::string Comm::broadcast(std::string value, int root, std::string_view what) {
  if (!multi()) return value;
  int64_t length = int64_t(value.size());
  broadcast_bytes(&length, sizeof(length), root, what);
  value.resize(size_t(length));
  broadcast_bytes(value.data(), length, root, what);
  return value;
}

void Comm::abort(const std::string& message, int exit_code) {
  spdlog::error("rank {}: {}", rank_, message);
  spdlog::default_logger()->flush();
#ifdef LRSA_WITH_MPI
  if (initialized_mpi_) MPI_Abort(MPI_COMM_WORLD, exit_code);
#endif
  std::_Exit(exit_code);
}

}  // namespace lrsa::dist
