// LRSA on cuDNN's dense flash attention: gather, varlen causal attention, reduction of the
// gathered copies' gradients (kernels/attn_lrsa_cudnn.h; plan in attn_lrsa_gather_plan.h).
// Compiled only with cuDNN (the attn_*.cu glob takes every file).
#ifdef LRSA_WITH_CUDNN
#include "attn_lrsa_cudnn.h"

#include <cmath>
#include <list>
#include <utility>

#include "attn_cudnn.h"
#include "attn_lrsa_gather_plan.h"
#include "cuda_common.cuh"
#include "recent_cache.h"

namespace lrsa::cuda {
namespace {

using bf16_t = __nv_bfloat16;
constexpr int kChunk = 8;  // bf16 per 16-byte copy

// Kg / Vg [R, Hk, D]: gathered row g of head h is source_row(source[g]) of k / v. One thread
// per 16-byte chunk of a (row, head), chunks of a row on consecutive threads.
__global__ void gather_kernel(const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, int64_t k_stride,
                              int64_t v_stride, const int32_t* __restrict__ source,
                              const int32_t* __restrict__ indices, int64_t compact_rows, int64_t R, int Hk, int D,
                              bf16_t* __restrict__ kg, bf16_t* __restrict__ vg) {
  const int chunks = D / kChunk;
  const int64_t n = R * Hk * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t gh = i / chunks;  // g * Hk + h
    const int ch = int(i % chunks), h = int(gh % Hk);
    const int64_t row = lrsa_gather::source_row(source[gh / Hk], indices + h * compact_rows);
    const int64_t col = int64_t(h) * D + ch * kChunk;
    reinterpret_cast<uint4*>(kg + gh * D)[ch] = *reinterpret_cast<const uint4*>(k + row * k_stride + col);
    reinterpret_cast<uint4*>(vg + gh * D)[ch] = *reinterpret_cast<const uint4*>(v + row * v_stride + col);
  }
}

// inv [Hk, T]: the compact row of each selected row of head h (pre-filled with -1).
__global__ void inverse_kernel(const int32_t* __restrict__ indices, int64_t compact_rows, int Hk, int64_t T,
                               int32_t* __restrict__ inv) {
  const int64_t n = compact_rows * Hk;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i / compact_rows;
    inv[h * T + indices[i]] = int32_t(i % compact_rows);
  }
}

// dk / dv row r of head h = sum of dKg / dVg over the gathered copies of r, in the fixed order
// of for_each_copy, in fp32; written (overwritten) in bf16. One thread per 16-byte chunk.
__global__ void reduce_kernel(const bf16_t* __restrict__ dkg, const bf16_t* __restrict__ dvg,
                              const lrsa_gather::CopyLists lists, const int32_t* __restrict__ inv, int64_t T, int Hk,
                              int D, bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, int64_t dk_stride,
                              int64_t dv_stride) {
  const int chunks = D / kChunk;
  const int64_t n = T * Hk * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rh = i / chunks;  // r * Hk + h
    const int ch = int(i % chunks), h = int(rh % Hk);
    const int64_t r = rh / Hk;
    float sk[kChunk] = {}, sv[kChunk] = {};
    lrsa_gather::for_each_copy(lists, r, inv[h * T + r], [&](int32_t g) {
      const int64_t at = (int64_t(g) * Hk + h) * D + ch * kChunk;
      const uint4 kw = *reinterpret_cast<const uint4*>(dkg + at), vw = *reinterpret_cast<const uint4*>(dvg + at);
      const bf16_t* kx = reinterpret_cast<const bf16_t*>(&kw);
      const bf16_t* vx = reinterpret_cast<const bf16_t*>(&vw);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) {
        sk[e] += __bfloat162float(kx[e]);
        sv[e] += __bfloat162float(vx[e]);
      }
    });
    uint4 kw, vw;
    bf16_t* kx = reinterpret_cast<bf16_t*>(&kw);
    bf16_t* vx = reinterpret_cast<bf16_t*>(&vw);
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      kx[e] = __float2bfloat16_rn(sk[e]);
      vx[e] = __float2bfloat16_rn(sv[e]);
    }
    const int64_t col = int64_t(h) * D + ch * kChunk;
    *reinterpret_cast<uint4*>(dk + r * dk_stride + col) = kw;
    *reinterpret_cast<uint4*>(dv + r * dv_stride + col) = vw;
  }
}

// The plan of one layout on the device, uploaded once and cached: every layer of a step (and
// the forward and backward) shares it.
struct GatherTables {
  VarlenSpans spans;
  Tensor source, raw_first, raw_copies, comp_first, comp_copies;
  int64_t rows = 0, compact_rows = 0;
  lrsa_gather::CopyLists lists() const {
    return {raw_first.data_as<int32_t>(), raw_copies.data_as<int32_t>(), comp_first.data_as<int32_t>(),
            comp_copies.data_as<int32_t>()};
  }
};

Tensor upload(const std::vector<int32_t>& values, Device device) {
  // An empty list (no selected rows) still gets one element so data() is a valid pointer.
  std::vector<int64_t> wide(values.begin(), values.end());
  if (wide.empty()) wide.push_back(0);
  return Tensor::from_ints(wide, {int64_t(wide.size())}, DType::I32, device);
}

struct TablesKey {
  int device;
  int64_t sink, lag, kept;
  std::vector<int64_t> cu_seqlens;
  bool operator==(const TablesKey&) const = default;
};

const GatherTables& gather_tables(const attn::SeqLayout& layout, const attn::LrsaParams& params, Device device) {
  TablesKey key{device.index, params.sink, params.lag, params.kept(), layout.cu_seqlens};
  thread_local std::list<std::pair<TablesKey, GatherTables>> cache;
  // A few layouts cover forward, backward and interleaved evaluation.
  return recent(cache, 4, std::move(key), [&] {
    const lrsa_gather::GatherPlan plan = lrsa_gather::plan_gather(layout.cu_seqlens, params);
    GatherTables t;
    t.spans.cu_seqlens_q = upload(plan.cu_q, device);
    t.spans.cu_seqlens_kv = upload(plan.cu_kv, device);
    t.spans.batch = plan.sequences();
    t.spans.max_seqlen_q = plan.max_q;
    t.spans.max_seqlen_kv = plan.max_kv;
    t.source = upload(plan.source, device);
    t.raw_first = upload(plan.raw_first, device);
    t.raw_copies = upload(plan.raw_copies, device);
    t.comp_first = upload(plan.comp_first, device);
    t.comp_copies = upload(plan.comp_copies, device);
    t.rows = plan.rows();
    t.compact_rows = int64_t(plan.comp_first.size()) - 1;
    return t;
  });
}

void check_rows(const char* op, const char* name, const Tensor& t) {
  LRSA_CHECK(t.dtype() == DType::BF16 && aligned16(t.data()) && t.stride(0) % kChunk == 0 && t.stride(2) == 1 &&
                 t.stride(1) == t.size(2),
             "{}: {} must be bf16 with contiguous 16-byte aligned [H, D] rows, got {} with strides {}", op, name,
             t.describe(), shape_str(t.strides()));
}

// Checks the arguments, returns the layout's tables and Kg / Vg [R, Hk, D] gathered from k / v.
struct Gathered {
  const GatherTables* tables;
  Tensor kg, vg;
};

Gathered gather(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                const Tensor& v, const attn::SeqLayout& layout, const attn::LrsaSelection& selection) {
  LRSA_CHECK(config.mode == attn::Mode::Lrsa, "{}: called for dense attention", op);
  LRSA_CHECK(lrsa_cudnn_usable(layout, config, k.size(1), q.size(2), q.dtype()),
             "{}: not usable for {} (head dimension, dtype, or gathered keys over attention.cudnn_gather_gib = {} "
             "GiB)",
             op, q.describe(), config.cudnn_gather_gib);
  check_rows(op, "k", k);
  check_rows(op, "v", v);
  use_device(q);
  const int64_t Hk = k.size(1), D = k.size(2), K = config.lrsa.kept();
  Gathered out{&gather_tables(layout, config.lrsa, q.device()), {}, {}};
  const GatherTables& t = *out.tables;
  LRSA_CHECK(selection.indices.defined() && selection.num_parts() * K == t.compact_rows &&
                 selection.indices.device() == q.device(),
             "{}: the selection ({} partitions, indices {}) does not belong to this layout ({} compact rows per head)",
             op, selection.num_parts(), selection.indices.defined() ? selection.indices.describe() : "undefined",
             t.compact_rows);
  out.kg = Tensor::empty({t.rows, Hk, D}, DType::BF16, q.device());
  out.vg = Tensor::empty({t.rows, Hk, D}, DType::BF16, q.device());
  const int64_t items = t.rows * Hk * (D / kChunk);
  gather_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
      static_cast<const bf16_t*>(k.data()), static_cast<const bf16_t*>(v.data()), k.stride(0), v.stride(0),
      t.source.data_as<int32_t>(), selection.indices.data_as<int32_t>(), t.compact_rows, t.rows, int(Hk), int(D),
      static_cast<bf16_t*>(out.kg.data()), static_cast<bf16_t*>(out.vg.data()));
  LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: gather");
  return out;
}

float softmax_scale(const Tensor& q) { return 1.0f / std::sqrt(float(q.size(2))); }

// Kg, Vg, dKg, dVg in bf16 (see the header).
int64_t gather_bytes(int64_t rows, int64_t kv_heads, int64_t head_dim) { return 4 * rows * kv_heads * head_dim * 2; }

}  // namespace

int64_t lrsa_cudnn_gather_bytes(const attn::SeqLayout& layout, const attn::LrsaParams& params, int64_t kv_heads,
                                int64_t head_dim) {
  return gather_bytes(lrsa_gather::gathered_rows(layout.cu_seqlens, params), kv_heads, head_dim);
}

bool lrsa_cudnn_usable(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t kv_heads,
                       int64_t head_dim, DType dtype) {
  // cuDNN's bf16 with D 64 / 128 is also what the gather and reduction kernels need (16-byte
  // chunks of bf16 rows); the plan's row numbers and codes are i32.
  const int64_t rows = lrsa_gather::gathered_rows(layout.cu_seqlens, config.lrsa);
  return cudnn_attention_supported(head_dim, dtype) && rows < (int64_t(1) << 31) &&
         double(gather_bytes(rows, kv_heads, head_dim)) <= config.cudnn_gather_gib * 1073741824.0;
}

void lrsa_cudnn_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const attn::SeqLayout& layout, attn::AttentionForward& result) {
  const Gathered g = gather("lrsa_cudnn_forward", config, q, k, v, layout, result.selection);
  cudnn_varlen_forward(q, g.kg, g.vg, g.tables->spans, softmax_scale(q), result.out, result.lse);
}

void lrsa_cudnn_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                         const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                         Tensor& dq, Tensor& dk, Tensor& dv) {
  const char* op = "lrsa_cudnn_backward";
  // cuDNN's backward sums dQ with atomics (kernels/attn_cudnn.h): not bitwise reproducible.
  LRSA_CHECK(!config.deterministic, "{}: attention.deterministic needs the native kernels (cuDNN's dQ uses atomics)", op);
  const Gathered g = gather(op, config, q, k, v, layout, saved.selection);
  check_rows(op, "dk", dk);
  check_rows(op, "dv", dv);
  const GatherTables& t = *g.tables;
  const int64_t T = q.size(0), Hk = k.size(1), D = k.size(2);
  Tensor dkg = Tensor::empty({t.rows, Hk, D}, DType::BF16, q.device());
  Tensor dvg = Tensor::empty({t.rows, Hk, D}, DType::BF16, q.device());
  cudnn_varlen_backward(q, g.kg, g.vg, saved.out, saved.lse, dout, t.spans, softmax_scale(q), dq, dkg, dvg);

  const Tensor inv = Tensor::empty({Hk, T}, DType::I32, q.device());
  LRSA_CUDA_CHECK(cudaMemsetAsync(inv.data(), 0xff, size_t(Hk * T) * sizeof(int32_t), current_stream()));  // -1
  if (t.compact_rows > 0) {
    inverse_kernel<<<grid_size(t.compact_rows * Hk, 256), 256, 0, current_stream()>>>(
        saved.selection.indices.data_as<int32_t>(), t.compact_rows, int(Hk), T, inv.data_as<int32_t>());
    LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: inverse selection");
  }
  const int64_t items = T * Hk * (D / kChunk);
  reduce_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
      static_cast<const bf16_t*>(dkg.data()), static_cast<const bf16_t*>(dvg.data()), t.lists(),
      inv.data_as<int32_t>(), T, int(Hk), int(D), static_cast<bf16_t*>(dk.data()), static_cast<bf16_t*>(dv.data()),
      dk.stride(0), dv.stride(0));
  LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: reduce gathered gradients");
}

}  // namespace lrsa::cuda
#endif
