// Host side shared by the CUDA attention kernels: argument checks specific to the kernels, the
// per-layout work tables (the plan of attn_plan.h, uploaded once and cached), and the
// compaction of the selected rows into a dense per-head history buffer.
#include <cstdio>
#include <list>
#include <string>

#include "attn_common.cuh"
#include "recent_cache.h"
#ifdef LRSA_WITH_CUDNN
#include "attn_cudnn.h"
#include "attn_lrsa_cudnn.h"
#endif

namespace lrsa::cuda::attn_detail {

namespace {

// Copies the selected rows of every KV head into kc/vc [Hk, rows, D]; one thread per 16 bytes.
__global__ void gather_rows_kernel(const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, int64_t k_stride,
                                   int64_t v_stride, const int* __restrict__ indices, int rows, int Hk, int D,
                                   bf16_t* __restrict__ kc, bf16_t* __restrict__ vc) {
  const int chunks = D / 8;
  const int64_t n = int64_t(Hk) * rows * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rc = i / chunks;  // hk * rows + compact row
    const int ch = int(i % chunks), hk = int(rc / rows);
    const int64_t src = int64_t(indices[rc]);
    const int64_t col = int64_t(hk) * D + ch * 8;
    reinterpret_cast<uint4*>(kc + rc * D)[ch] = *reinterpret_cast<const uint4*>(k + src * k_stride + col);
    reinterpret_cast<uint4*>(vc + rc * D)[ch] = *reinterpret_cast<const uint4*>(v + src * v_stride + col);
  }
}

void check_aligned(const char* op, const char* name, const Tensor& t) {
  LRSA_CHECK(aligned16(t.data()) && t.stride(0) % 8 == 0,
             "{}: {} must start on a 16-byte boundary with a row stride that is a multiple of 8 elements for the "
             "CUDA kernels (16-byte row copies), got {} with strides {}",
             op, name, t.describe(), shape_str(t.strides()));
}

}  // namespace

int64_t row_stride(const Tensor& t) { return t.stride(0); }

int check_kernel_args(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                      const Tensor& v, std::initializer_list<std::pair<const char*, const Tensor*>> outputs) {
  const int64_t D = q.size(2);
  LRSA_CHECK(D == 64 || D == 128,
             "{}: head dimension {} is not supported by the CUDA attention kernels (64 or 128), q is {}", op, D,
             q.describe());
  LRSA_CHECK(q.dtype() == DType::BF16 || q.dtype() == DType::F32,
             "{}: the CUDA attention kernels take bf16 (or f32, computed in bf16), got {}", op, q.describe());
  if (config.mode == attn::Mode::Lrsa) {
    const int64_t L = config.lrsa.lag;
    LRSA_CHECK(L % kBlockN == 0,
               "{}: attention.lag = {} is not supported by the CUDA kernels: lag must be a multiple of {} (e.g. {}, "
               "{}, {}, {}); the CPU path accepts any lag",
               op, L, kBlockN, kBlockN, 2 * kBlockN, 8 * kBlockN, 16 * kBlockN);
  }
  if (q.dtype() == DType::BF16) {  // f32 inputs are converted to contiguous bf16 copies first
    check_aligned(op, "q", q);
    check_aligned(op, "k", k);
    check_aligned(op, "v", v);
  }
  for (const auto& [name, t] : outputs) check_aligned(op, name, *t);
  LRSA_CUDA_CHECK(cudaSetDevice(q.device().index));
  return int(D);
}

namespace {

// Whether this call runs on cuDNN; throws with the reason when Backend::Cudnn cannot.
bool use_cudnn(const char* op, const attn::AttentionConfig& config, [[maybe_unused]] const Tensor& q,
               [[maybe_unused]] const Tensor& k, [[maybe_unused]] const attn::SeqLayout& layout) {
  if (config.backend == attn::Backend::Native) return false;
  std::string why;
  if (config.deterministic) {
    why = "deterministic mode was asked for, and cuDNN's backward accumulates dQ with atomics";
  } else {
#ifdef LRSA_WITH_CUDNN
    if (!cudnn_attention_supported(q.size(2), q.dtype()))
      why = "cuDNN attention takes bf16 with head dim 64 or 128 on an sm_90+ device, got q " + q.describe();
    else if (config.mode == attn::Mode::Lrsa &&
             !lrsa_cudnn_usable(layout, config, q.size(1), k.size(1), q.size(2), q.dtype())) {
      if (config.backend != attn::Backend::Cudnn) return false;  // auto: the reason is not shown
      char text[256];  // snprintf: nvcc cannot compile fmt's compile-time format checks
      std::snprintf(text, sizeof text,
                    "one of LRSA's virtual sequences needs more than attention.cudnn_gather_gib = %g GiB (its "
                    "gathered keys and cuDNN's workspace), or all of them gather 2^31 rows or more "
                    "(kernels/attn_lrsa_cudnn.h)",
                    config.cudnn_gather_gib);
      why = text;
    }
#else
    why = "this build has no cuDNN (cmake printed 'lrsa: cuDNN OFF' with the reason)";
#endif
  }
  if (why.empty()) return true;
  LRSA_CHECK(config.backend != attn::Backend::Cudnn, "{}: attention backend cudnn cannot run this call: {}", op, why);
  return false;
}

#ifdef LRSA_WITH_CUDNN
// Every document is one sequence, queries and keys alike.
VarlenSpans dense_spans(const attn::SeqLayout& layout) {
  VarlenSpans spans;
  spans.cu_seqlens_q = spans.cu_seqlens_kv = layout.cu_seqlens_device;
  spans.batch = int64_t(layout.cu_seqlens.size()) - 1;
  spans.max_seqlen_q = spans.max_seqlen_kv = layout.max_seqlen();
  return spans;
}
#endif

}  // namespace

// Without cuDNN, use_cudnn never returns true and the arguments it does not take are unused.
bool cudnn_forward(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                   [[maybe_unused]] const Tensor& v, const attn::SeqLayout& layout,
                   [[maybe_unused]] attn::AttentionForward& result) {
  if (!use_cudnn(op, config, q, k, layout)) return false;
#ifdef LRSA_WITH_CUDNN
  if (config.mode == attn::Mode::Lrsa)
    lrsa_cudnn_forward(config, q, k, v, layout, result);
  else
    cudnn_varlen_forward(q, k, v, dense_spans(layout), 1.f / std::sqrt(float(q.size(2))), result.out, result.lse);
#endif
  return true;
}

bool cudnn_backward(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                    [[maybe_unused]] const Tensor& v, const attn::SeqLayout& layout,
                    [[maybe_unused]] const attn::AttentionForward& saved, [[maybe_unused]] const Tensor& dout,
                    [[maybe_unused]] Tensor& dq, [[maybe_unused]] Tensor& dk, [[maybe_unused]] Tensor& dv) {
  if (!use_cudnn(op, config, q, k, layout)) return false;
#ifdef LRSA_WITH_CUDNN
  if (config.mode == attn::Mode::Lrsa)
    lrsa_cudnn_backward(config, q, k, v, layout, saved, dout, dq, dk, dv);
  else
    cudnn_varlen_backward(q, k, v, saved.out, saved.lse, dout, dense_spans(layout),
                          1.f / std::sqrt(float(q.size(2))), dq, dk, dv);
#endif
  return true;
}

// f32 inputs are computed in bf16 (the model runs bf16 on the GPU; see cuda_attn.h).
Tensor as_bf16(const Tensor& t) { return t.dtype() == DType::BF16 ? t : t.to(DType::BF16); }

Compact gather_selected(const Tensor& k, const Tensor& v, const attn::LrsaSelection& sel, int64_t kept) {
  Compact c;
  const int64_t Hk = k.size(1), D = k.size(2), rows = sel.num_parts() * kept;
  c.rows = int(rows);
  if (rows == 0) return c;
  c.kc = Tensor::empty({Hk, rows, D}, DType::BF16, k.device());
  c.vc = Tensor::empty({Hk, rows, D}, DType::BF16, k.device());
  const int64_t items = Hk * rows * (D / 8);
  gather_rows_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
      static_cast<const bf16_t*>(k.data()), static_cast<const bf16_t*>(v.data()), k.stride(0), v.stride(0), sel.indices.data_as<int32_t>(), c.rows,
      int(Hk), int(D), static_cast<bf16_t*>(c.kc.data()), static_cast<bf16_t*>(c.vc.data()));
  LRSA_CUDA_CHECK_LAUNCH("attention: gather selected rows");
  return c;
}

// ---------------------------------------------------------------------------------------------
// Work tables

const FwdTile* WorkTables::fwd() const { return reinterpret_cast<const FwdTile*>(device.data_as<int32_t>() + fwd_off); }
const BwdTile* WorkTables::bwd_raw() const {
  return reinterpret_cast<const BwdTile*>(device.data_as<int32_t>() + raw_off);
}
const BwdTile* WorkTables::bwd_comp() const {
  return reinterpret_cast<const BwdTile*>(device.data_as<int32_t>() + comp_off);
}
const int* WorkTables::part_start() const { return device.data_as<int32_t>() + part_off; }
const int* WorkTables::slot_first() const { return device.data_as<int32_t>() + slot_off; }

namespace {

struct TableKey {
  int device;
  bool lrsa;
  int64_t sink, lag, kept;
  std::vector<int64_t> cu_seqlens;
  bool operator==(const TableKey&) const = default;
};

WorkTables upload_tables(const WorkPlan& plan, Device device) {
  WorkTables w;
  w.n_fwd = int(plan.fwd.size());
  w.n_bwd_raw = int(plan.raw.size());
  w.n_bwd_comp = int(plan.comp.size());
  w.n_parts = int(plan.part_start.size());
  w.n_slots = plan.slots();
  std::vector<int64_t> flat;
  auto append = [&flat](const int* p, size_t n) {
    const int64_t off = int64_t(flat.size());
    flat.insert(flat.end(), p, p + n);
    while (flat.size() % 4 != 0) flat.push_back(0);  // keep every table 16-byte aligned
    return off;
  };
  constexpr size_t kFwdInts = sizeof(FwdTile) / sizeof(int), kBwdInts = sizeof(BwdTile) / sizeof(int);
  w.fwd_off = append(reinterpret_cast<const int*>(plan.fwd.data()), plan.fwd.size() * kFwdInts);
  w.raw_off = append(reinterpret_cast<const int*>(plan.raw.data()), plan.raw.size() * kBwdInts);
  w.comp_off = append(reinterpret_cast<const int*>(plan.comp.data()), plan.comp.size() * kBwdInts);
  w.part_off = append(plan.part_start.data(), plan.part_start.size());
  w.slot_off = append(plan.slot_first.data(), plan.slot_first.size());
  w.device = Tensor::from_ints(flat, {int64_t(flat.size())}, DType::I32, device);
  return w;
}

}  // namespace

const WorkTables& work_tables(const attn::AttentionConfig& config, const attn::SeqLayout& layout, Device device) {
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  TableKey key{device.index, lrsa, lrsa ? config.lrsa.sink : 0, lrsa ? config.lrsa.lag : 0,
               lrsa ? config.lrsa.kept() : 0, layout.cu_seqlens};
  // Every layer of a step shares one layout: a few recent layouts cover a forward and backward
  // pass (and interleaved evaluation) without uploading the tables again.
  thread_local std::list<std::pair<TableKey, WorkTables>> cache;
  return recent(cache, 4, std::move(key),
                [&] { return upload_tables(plan_work(config, layout.cu_seqlens), device); });
}

}  // namespace lrsa::cuda::attn_detail
