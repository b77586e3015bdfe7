#pragma once
// Data-parallel gradient reduction over the decoder's flat f32 gradient arena, overlapped with
// backward: the arena is cut into buckets of whole layers (about bucket_bytes each); a bucket is
// reduced as soon as the decoder reports its lowest layer's gradients final (backward finishes
// layers in reverse order), the embedding/final norm/lm_head ranges when it reports the
// non-layer gradients. On CUDA the reduction runs through NCCL on its own stream, ordered after
// the compute stream by an event, and compute waits for it before the optimizer; on the CPU it
// runs through nonblocking MPI collectives.
//
// ZeRO-1: rank r owns the contiguous shard shard_range(P, r, world) of the arena: each bucket is
// reduced to the owners of the shards it overlaps (a reduce-scatter over contiguous shards), the
// optimizer updates only its shard, and all_gather_params() gives every rank all parameters.
#include <cstdint>
#include <memory>
#include <vector>

#include "lrsa/core/tensor.h"
#include "lrsa/dist/comm.h"

namespace lrsa::dist {

struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Rank r's ZeRO-1 shard of n elements: contiguous, in rank order, each a multiple of 64
// elements (256-byte aligned for NCCL) except the last.
Range shard_range(int64_t n, int rank, int world);

enum class Transport { Mpi, Nccl };

class DataParallel {
 public:
  static constexpr int64_t kNonLayerGrads = -1;  // as model::Decoder::kNonLayerGrads

  // grads: flat f32 gradient arena [P]; params: flat parameter arena [P] (any dtype; gathered
  // under ZeRO-1); layers: each layer's range of the arena, in layer order (contiguous).
  DataParallel(Comm& comm, Transport transport, Tensor grads, Tensor params, const std::vector<Range>& layers,
               int64_t bucket_bytes, bool zero1);
  ~DataParallel();

  Range shard() const { return shard_; }
  bool zero1() const { return zero1_; }
  int64_t num_buckets() const { return int64_t(buckets_.size()); }

  // Arms reduction for the next backward only (the last micro-batch of an optimizer step:
  // gradients of earlier micro-batches accumulate locally).
  void arm() { armed_ = true; }
  // The decoder's grads-ready callback: launches the buckets whose gradients are now final.
  void on_grads_ready(int64_t layer);
  // Launches what is left, waits until the reduction is complete and orders later compute after
  // it: then shard() of the gradients (everything without ZeRO-1) holds the sum over ranks.
  void finish();
  // ZeRO-1: every rank's updated shard of the parameters to every rank.
  void all_gather_params();

 private:
  struct Bucket {
    Range range;
    int64_t ready_layer;  // launched once this layer (or kNonLayerGrads) is reported
    bool launched = false;
  };
  void launch(Bucket& bucket);

  Comm& comm_;
  Transport transport_;
  Tensor grads_, params_;
  bool zero1_, armed_ = false;
  Range shard_;
  std::vector<Range> shards_;  // of every rank
  std::vector<Bucket> buckets_;
  struct Backend;  // the transport's state (MPI requests; NCCL communicator, stream, events)
  std::unique_ptr<Backend> backend_;
};

}  // namespace lrsa::dist
