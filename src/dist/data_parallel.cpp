#include "lrsa/dist/data_parallel.h"

#include <algorithm>

#include "lrsa/core/error.h"

#ifdef LRSA_WITH_MPI
#include <mpi.h>
#endif
#ifdef LRSA_WITH_NCCL
#include <nccl.h>

#include "lrsa/core/cuda_backend.h"
#endif

namespace lrsa::dist {

namespace {

#ifdef LRSA_WITH_NCCL
#define LRSA_NCCL_CHECK(call)                                                                      \
  do {                                                                                             \
    ncclResult_t lrsa_nccl_status_ = (call);                                                       \
    if (lrsa_nccl_status_ != ncclSuccess)                                                          \
      ::lrsa::fail("NCCL error {} ({}) in {}", int(lrsa_nccl_status_), ncclGetErrorString(lrsa_nccl_status_), #call); \
  } while (0)
#endif

// MPI counts are int: long ranges go in pieces of this many elements.
constexpr int64_t kMpiChunk = int64_t(1) << 30;

}  // namespace

Range shard_range(int64_t n, int rank, int world) {
  const int64_t per = (n + world - 1) / world;
  const int64_t aligned = (per + 63) / 64 * 64;
  const int64_t begin = std::min(n, aligned * rank);
  return {begin, std::min(n, begin + aligned)};
}

struct DataParallel::Backend {
#ifdef LRSA_WITH_MPI
  std::vector<MPI_Request> requests;
#endif
#ifdef LRSA_WITH_NCCL
  ncclComm_t nccl = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
#endif
};

DataParallel::DataParallel(Comm& comm, Transport transport, Tensor grads, Tensor params, const std::vector<Range>& layers,
                           int64_t bucket_bytes, bool zero1)
    : comm_(comm), transport_(transport), grads_(std::move(grads)), params_(std::move(params)), zero1_(zero1),
      backend_(std::make_unique<Backend>()) {
  const int64_t n = grads_.numel();
  LRSA_CHECK(grads_.dtype() == DType::F32 && params_.numel() == n, "data parallel: gradients must be f32 [{}]", n);
  for (int r = 0; r < comm_.size(); ++r) shards_.push_back(zero1_ ? shard_range(n, r, comm_.size()) : Range{0, n});
  shard_ = shards_[size_t(comm_.rank())];

  // Buckets of whole layers from the last one down (the order backward finishes them), then the
  // ranges before the first and after the last layer (embedding; final norm, lm_head).
  const int64_t bucket_elements = std::max<int64_t>(bucket_bytes / 4, 1);
  for (size_t i = layers.size(); i-- > 0;) {
    if (buckets_.empty() || buckets_.back().ready_layer == kNonLayerGrads ||
        buckets_.back().range.size() >= bucket_elements) {
      buckets_.push_back({layers[i], int64_t(i)});
    } else {
      LRSA_CHECK(layers[i].end == buckets_.back().range.begin, "data parallel: layer {} is not contiguous with layer {}",
                 i, i + 1);
      buckets_.back().range.begin = layers[i].begin;
      buckets_.back().ready_layer = int64_t(i);
    }
  }
  const Range head{0, layers.empty() ? n : layers.front().begin}, tail{layers.empty() ? n : layers.back().end, n};
  for (const Range& r : {tail, head})
    if (r.size() > 0) buckets_.push_back({r, kNonLayerGrads});

  if (transport_ == Transport::Mpi) {
    LRSA_CHECK(!grads_.device().is_cuda(), "data parallel: the MPI transport reduces host memory; on CUDA use nccl");
    LRSA_CHECK(mpi_available() || !comm_.multi(), "data parallel: built without MPI");
    return;
  }
#ifdef LRSA_WITH_NCCL
  LRSA_CHECK(grads_.device().is_cuda(), "data parallel: the NCCL transport needs CUDA tensors");
  ncclUniqueId id;
  if (comm_.is_root()) LRSA_NCCL_CHECK(ncclGetUniqueId(&id));
  comm_.broadcast_bytes(&id, sizeof(id), 0, "broadcast of the NCCL unique id");
  LRSA_NCCL_CHECK(ncclCommInitRank(&backend_->nccl, comm_.size(), id, comm_.rank()));
  LRSA_CUDA_CHECK(cudaStreamCreateWithFlags(&backend_->stream, cudaStreamNonBlocking));
  LRSA_CUDA_CHECK(cudaEventCreateWithFlags(&backend_->ready, cudaEventDisableTiming));
  LRSA_CUDA_CHECK(cudaEventCreateWithFlags(&backend_->done, cudaEventDisableTiming));
#else
  fail("data parallel: the nccl transport needs a build with NCCL (CMake found none)");
#endif
}

DataParallel::~DataParallel() {
#ifdef LRSA_WITH_NCCL
  if (backend_->nccl != nullptr) ncclCommDestroy(backend_->nccl);
  if (backend_->stream != nullptr) cudaStreamDestroy(backend_->stream);
  if (backend_->ready != nullptr) cudaEventDestroy(backend_->ready);
  if (backend_->done != nullptr) cudaEventDestroy(backend_->done);
#endif
}

void DataParallel::on_grads_ready(int64_t layer) {
  if (!armed_ || !comm_.multi()) return;
  for (Bucket& b : buckets_)
    if (b.ready_layer == layer && !b.launched) launch(b);
#ifdef LRSA_WITH_MPI
  // MPI progresses nonblocking collectives inside MPI calls: poke it while backward runs.
  if (transport_ == Transport::Mpi && !backend_->requests.empty()) {
    int flag = 0;
    MPI_Testall(int(backend_->requests.size()), backend_->requests.data(), &flag, MPI_STATUSES_IGNORE);
  }
#endif
}

void DataParallel::launch(Bucket& bucket) {
  bucket.launched = true;
  [[maybe_unused]] float* base = static_cast<float*>(grads_.data());
  // Pieces of the bucket and the rank each is reduced to (-1: all ranks).
  std::vector<std::pair<Range, int>> pieces;
  if (!zero1_) {
    pieces.push_back({bucket.range, -1});
  } else {
    for (int r = 0; r < comm_.size(); ++r) {
      const Range s = shards_[size_t(r)];
      const Range piece{std::max(s.begin, bucket.range.begin), std::min(s.end, bucket.range.end)};
      if (piece.size() > 0) pieces.push_back({piece, r});
    }
  }
  if (transport_ == Transport::Mpi) {
#ifdef LRSA_WITH_MPI
    for (const auto& [piece, root] : pieces) {
      for (int64_t at = piece.begin; at < piece.end; at += kMpiChunk) {
        const int count = int(std::min(kMpiChunk, piece.end - at));
        float* p = base + at;
        MPI_Request request;
        const int rc = root < 0 ? MPI_Iallreduce(MPI_IN_PLACE, p, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &request)
                                : MPI_Ireduce(root == comm_.rank() ? MPI_IN_PLACE : p, p, count, MPI_FLOAT, MPI_SUM,
                                              root, MPI_COMM_WORLD, &request);
        LRSA_CHECK(rc == MPI_SUCCESS, "MPI gradient reduction failed (code {})", rc);
        backend_->requests.push_back(request);
      }
    }
#endif
    return;
  }
#ifdef LRSA_WITH_NCCL
  // The bucket's gradients are final once the compute stream gets here.
  LRSA_CUDA_CHECK(cudaEventRecord(backend_->ready, cuda::current_stream()));
  LRSA_CUDA_CHECK(cudaStreamWaitEvent(backend_->stream, backend_->ready, 0));
  LRSA_NCCL_CHECK(ncclGroupStart());
  for (const auto& [piece, root] : pieces) {
    float* p = base + piece.begin;
    if (root < 0) {
      LRSA_NCCL_CHECK(ncclAllReduce(p, p, size_t(piece.size()), ncclFloat32, ncclSum, backend_->nccl, backend_->stream));
    } else {
      LRSA_NCCL_CHECK(ncclReduce(p, p, size_t(piece.size()), ncclFloat32, ncclSum, root, backend_->nccl, backend_->stream));
    }
  }
  LRSA_NCCL_CHECK(ncclGroupEnd());
#endif
}

void DataParallel::finish() {
  if (!armed_ || !comm_.multi()) {  // one rank: its gradients are the sum
    armed_ = false;
    return;
  }
  for (Bucket& b : buckets_)
    if (!b.launched) launch(b);
  for (Bucket& b : buckets_) b.launched = false;
  armed_ = false;
  if (transport_ == Transport::Mpi) {
#ifdef LRSA_WITH_MPI
    std::vector<MPI_Request>& requests = backend_->requests;
    comm_.wait([&] {
      int flag = 0;
      const int rc = MPI_Testall(int(requests.size()), requests.data(), &flag, MPI_STATUSES_IGNORE);
      LRSA_CHECK(rc == MPI_SUCCESS, "MPI gradient reduction failed (code {})", rc);
      return flag != 0;
    }, "gradient reduction (MPI)");
    requests.clear();
#endif
    return;
  }
#ifdef LRSA_WITH_NCCL
  LRSA_CUDA_CHECK(cudaEventRecord(backend_->done, backend_->stream));
  LRSA_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(), backend_->done, 0));
  // Host waits too: a peer that died or an NCCL error surfaces here, bounded by the timeout.
  comm_.wait([&] {
    ncclResult_t async = ncclSuccess;
    LRSA_NCCL_CHECK(ncclCommGetAsyncError(backend_->nccl, &async));
    LRSA_CHECK(async == ncclSuccess, "NCCL reported an error during the gradient all-reduce: {}",
               ncclGetErrorString(async));
    const cudaError_t status = cudaEventQuery(backend_->done);
    if (status == cudaErrorNotReady) return false;
    LRSA_CUDA_CHECK(status);
    return true;
  }, "gradient reduction (NCCL)");
#endif
}

void DataParallel::all_gather_params() {
  if (!zero1_ || !comm_.multi()) return;
  [[maybe_unused]] const int64_t es = int64_t(params_.element_size());
  [[maybe_unused]] char* base = static_cast<char*>(params_.data());
  if (transport_ == Transport::Mpi) {
#ifdef LRSA_WITH_MPI
    std::vector<int> counts, displacements;
    for (const Range& s : shards_) {
      LRSA_CHECK(s.end * es <= INT32_MAX, "ZeRO-1 over MPI: {} parameter bytes exceed MPI's int counts", s.end * es);
      counts.push_back(int(s.size() * es));
      displacements.push_back(int(s.begin * es));
    }
    MPI_Request request;
    const int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_BYTE, base, counts.data(), displacements.data(), MPI_BYTE,
                                   MPI_COMM_WORLD, &request);
    LRSA_CHECK(rc == MPI_SUCCESS, "MPI parameter all-gather failed (code {})", rc);
    comm_.wait([&] {
      int flag = 0;
      MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
      return flag != 0;
    }, "parameter all-gather (MPI)");
#endif
    return;
  }
#ifdef LRSA_WITH_NCCL
  // After the optimizer's kernels; later compute waits for the gathered parameters.
  LRSA_CUDA_CHECK(cudaEventRecord(backend_->ready, cuda::current_stream()));
  LRSA_CUDA_CHECK(cudaStreamWaitEvent(backend_->stream, backend_->ready, 0));
  LRSA_NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < comm_.size(); ++r) {
    const Range s = shards_[size_t(r)];
    char* p = base + s.begin * es;
    if (s.size() > 0)
      LRSA_NCCL_CHECK(ncclBroadcast(p, p, size_t(s.size() * es), ncclUint8, r, backend_->nccl, backend_->stream));
  }
  LRSA_NCCL_CHECK(ncclGroupEnd());
  LRSA_CUDA_CHECK(cudaEventRecord(backend_->done, backend_->stream));
  LRSA_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(), backend_->done, 0));
#endif
}

}  // namespace lrsa::dist
