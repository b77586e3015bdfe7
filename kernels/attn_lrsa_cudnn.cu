// LRSA on cuDNN's dense flash attention: gather, varlen attention (causal per partition,
// non-causal per group of partitions), merge of the grouped passes' outputs, reduction of the
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
#include "lrsa/ops/cuda_ops.h"
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
// of for_each_copy_in, in fp32. One call per pass; dKg / dVg hold the pass's gathered rows
// [g0, g1). The pass's keys all lie before its last query row, so only rows [0, rows) have
// copies in it. A row's running sum sits in acc_k / acc_v [T, Hk, D] f32 from the pass of its
// own query row on (every row is a raw key of its own causal sequence, and those come first):
// rows >= fresh (a causal pass's query rows; none in grouped passes) start from zero, earlier
// ones from acc, and then add this pass's copies in order. Middle passes skip rows without
// copies in them; the last pass (rows = T) writes every row's dk / dv (overwritten) in bf16.
// With one pass (fresh = 0) the sums never leave registers. One thread per 16-byte chunk.
__global__ void reduce_kernel(const bf16_t* __restrict__ dkg, const bf16_t* __restrict__ dvg, int32_t g0, int32_t g1,
                              const lrsa_gather::CopyLists lists, const int32_t* __restrict__ inv, int64_t T, int Hk,
                              int D, int64_t rows, int64_t fresh, bool last, float* __restrict__ acc_k,
                              float* __restrict__ acc_v, bf16_t* __restrict__ dk, bf16_t* __restrict__ dv,
                              int64_t dk_stride, int64_t dv_stride) {
  const int chunks = D / kChunk;
  const int64_t n = rows * Hk * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rh = i / chunks;  // r * Hk + h
    const int ch = int(i % chunks), h = int(rh % Hk);
    const int64_t r = rh / Hk;
    const int32_t comp_row = inv[h * T + r];
    if (!last && !lrsa_gather::has_copy_in(lists, r, comp_row, g0, g1)) continue;
    float sk[kChunk] = {}, sv[kChunk] = {};
    const int64_t running = rh * D + ch * kChunk;  // in acc_k / acc_v
    if (r < fresh) {
      load_floats<kChunk>(acc_k + running, sk);
      load_floats<kChunk>(acc_v + running, sv);
    }
    lrsa_gather::for_each_copy_in(lists, r, comp_row, g0, g1, [&](int32_t g) {
      const int64_t at = (int64_t(g - g0) * Hk + h) * D + ch * kChunk;
      const uint4 kw = *reinterpret_cast<const uint4*>(dkg + at), vw = *reinterpret_cast<const uint4*>(dvg + at);
      const bf16_t* kx = reinterpret_cast<const bf16_t*>(&kw);
      const bf16_t* vx = reinterpret_cast<const bf16_t*>(&vw);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) {
        sk[e] += __bfloat162float(kx[e]);
        sv[e] += __bfloat162float(vx[e]);
      }
    });
    if (!last) {
      store_floats<kChunk>(acc_k + running, sk);
      store_floats<kChunk>(acc_v + running, sv);
      continue;
    }
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

// A grouped pass's forward output merged into the causal passes' (in place): per (row, head)
// with lse_c = lse[h, r] (causal part) and lse_g (grouped part, -inf for rows in gaps, whose out_g
// is garbage and skipped), out = out_c e^(lse_c - m) + out_g e^(lse_g - m), m = logaddexp of the
// two. merge_lse_kernel then writes m: the out kernel reads lse_c of every chunk first. One
// thread per 16-byte chunk of a (row, head).
__device__ __forceinline__ float log_add_exp(float a, float b) {
  const float hi = fmaxf(a, b);
  return hi + log1pf(__expf(fminf(a, b) - hi));
}

__global__ void merge_out_kernel(bf16_t* __restrict__ out, int64_t out_stride, const float* __restrict__ lse,
                                 int64_t lse_stride, const bf16_t* __restrict__ out_g, const float* __restrict__ lse_g,
                                 int64_t rows, int Hq, int D) {
  const int chunks = D / kChunk;
  const int64_t n = rows * Hq * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rh = i / chunks, r = rh / Hq;
    const int h = int(rh % Hq), ch = int(i % chunks);
    const float lg = lse_g[h * rows + r];
    if (lg == -INFINITY) continue;
    const float lc = lse[h * lse_stride + r], m = log_add_exp(lc, lg), wc = __expf(lc - m), wg = __expf(lg - m);
    uint4* o = reinterpret_cast<uint4*>(out + r * out_stride + int64_t(h) * D) + ch;
    const uint4 gw = reinterpret_cast<const uint4*>(out_g + rh * D)[ch];
    uint4 ow = *o;
    bf16_t* ox = reinterpret_cast<bf16_t*>(&ow);
    const bf16_t* gx = reinterpret_cast<const bf16_t*>(&gw);
#pragma unroll
    for (int e = 0; e < kChunk; ++e)
      ox[e] = __float2bfloat16_rn(__bfloat162float(ox[e]) * wc + __bfloat162float(gx[e]) * wg);
    *o = ow;
  }
}

__global__ void merge_lse_kernel(float* __restrict__ lse, int64_t lse_stride, const float* __restrict__ lse_g,
                                 int64_t rows, int Hq) {
  const int64_t n = rows * Hq;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i / rows, r = i % rows;
    const float lg = lse_g[i];
    if (lg != -INFINITY) lse[h * lse_stride + r] = log_add_exp(lse[h * lse_stride + r], lg);
  }
}

// One cuDNN call of LRSA: virtual sequences [s0, s1) of the plan, i.e. query rows [q0, q1) of
// q / out / lse / dq and gathered rows [g0, g1), with spans counted from those starts; the
// reduction's rows and fresh rows (reduce_kernel).
struct Pass {
  VarlenSpans spans;
  int64_t q0 = 0, q1 = 0;
  int32_t g0 = 0, g1 = 0;
  int64_t reduce_rows = 0, fresh = 0;
};

// The plan of one layout on the device, uploaded once and cached: every layer of a step (and
// the forward and backward) shares it.
struct GatherTables {
  std::vector<Pass> passes;
  Tensor source, raw_first, raw_copies, comp_first, comp_copies;
  int64_t compact_rows = 0;
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

// Kg, Vg, dKg, dVg in bf16 (see the header).
int64_t gather_bytes(int64_t rows, int64_t kv_heads, int64_t head_dim) { return 4 * rows * kv_heads * head_dim * 2; }

// Memory of one pass: its gathered buffers and cuDNN's backward workspace.
struct PassMemory {
  int64_t q_heads, kv_heads, head_dim;
  int64_t operator()(int64_t sequences, int64_t rows, int64_t longest, int64_t q_rows) const {
    return gather_bytes(rows, kv_heads, head_dim) +
           cudnn_backward_workspace_estimate(sequences, longest, q_rows, q_heads, head_dim);
  }
};

double budget_bytes(const attn::AttentionConfig& config) { return config.cudnn_gather_gib * 1073741824.0; }

struct TablesKey {
  int device;
  int64_t sink, lag, kept, q_heads, kv_heads, head_dim;
  double budget;
  std::vector<int64_t> cu_seqlens;
  bool operator==(const TablesKey&) const = default;
};

// The plan of both directions (groups of kLrsaCudnnGroup), see attn_lrsa_gather_plan.h.
const GatherTables& gather_tables(const attn::SeqLayout& layout, const attn::AttentionConfig& config,
                                  PassMemory memory, Device device) {
  const attn::LrsaParams& params = config.lrsa;
  TablesKey key{device.index,    params.sink,     params.lag,           params.kept(),    memory.q_heads,
                memory.kv_heads, memory.head_dim, budget_bytes(config), layout.cu_seqlens};
  thread_local std::list<std::pair<TablesKey, GatherTables>> cache;
  // A few layouts cover training and interleaved evaluation.
  return recent(cache, 8, std::move(key), [&] {
    const lrsa_gather::GatherPlan plan = lrsa_gather::plan_gather(layout.cu_seqlens, params, kLrsaCudnnGroup);
    GatherTables t;
    const std::vector<int64_t> first = lrsa_gather::plan_passes(plan, budget_bytes(config), memory);
    const int64_t T = layout.total();
    for (size_t i = 0; i + 1 < first.size(); ++i) {
      const int64_t s0 = first[i], s1 = first[i + 1];
      Pass pass;
      pass.q0 = plan.q_start[size_t(s0)];
      pass.q1 = plan.q_end(s1 - 1);
      pass.g0 = plan.cu_kv[size_t(s0)];
      pass.g1 = plan.cu_kv[size_t(s1)];
      pass.spans.causal = plan.causal(s0);
      std::vector<int32_t> cu_q, cu_kv, q_starts;  // q_starts: grouped passes only (gaps between groups)
      for (int64_t s = s0; s <= s1; ++s) {
        cu_q.push_back(plan.cu_q[size_t(s)] - plan.cu_q[size_t(s0)]);
        cu_kv.push_back(plan.cu_kv[size_t(s)] - pass.g0);
        if (!pass.spans.causal) q_starts.push_back(int32_t((s < s1 ? plan.q_start[size_t(s)] : pass.q1) - pass.q0));
        if (s > s0) {
          const size_t n = cu_q.size();
          pass.spans.max_seqlen_q = std::max<int64_t>(pass.spans.max_seqlen_q, cu_q[n - 1] - cu_q[n - 2]);
          pass.spans.max_seqlen_kv = std::max<int64_t>(pass.spans.max_seqlen_kv, cu_kv[n - 1] - cu_kv[n - 2]);
        }
      }
      pass.spans.cu_seqlens_q = upload(cu_q, device);
      pass.spans.cu_seqlens_kv = upload(cu_kv, device);
      if (!pass.spans.causal) pass.spans.q_starts = upload(q_starts, device);
      pass.spans.batch = s1 - s0;
      const bool last = i + 2 == first.size();
      pass.reduce_rows = last ? T : pass.q1;
      pass.fresh = pass.spans.causal ? pass.q0 : T;
      t.passes.push_back(std::move(pass));
    }
    t.source = upload(plan.source, device);
    t.raw_first = upload(plan.raw_first, device);
    t.raw_copies = upload(plan.raw_copies, device);
    t.comp_first = upload(plan.comp_first, device);
    t.comp_copies = upload(plan.comp_copies, device);
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

// Checks the arguments of either direction and returns the layout's tables.
const GatherTables& prepare(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                            const Tensor& v, const attn::SeqLayout& layout, const attn::LrsaSelection& selection) {
  LRSA_CHECK(config.mode == attn::Mode::Lrsa, "{}: called for dense attention", op);
  LRSA_CHECK(lrsa_cudnn_usable(layout, config, q.size(1), k.size(1), q.size(2), q.dtype()),
             "{}: not usable for {} (head dimension, dtype, one virtual sequence over attention.cudnn_gather_gib "
             "= {} GiB, or 2^31 gathered rows)",
             op, q.describe(), config.cudnn_gather_gib);
  check_rows(op, "k", k);
  check_rows(op, "v", v);
  use_device(q);
  const GatherTables& t = gather_tables(layout, config, PassMemory{q.size(1), k.size(1), q.size(2)}, q.device());
  LRSA_CHECK(selection.indices.defined() && selection.num_parts() * config.lrsa.kept() == t.compact_rows &&
                 selection.indices.device() == q.device(),
             "{}: the selection ({} partitions, indices {}) does not belong to this layout ({} compact rows per head)",
             op, selection.num_parts(), selection.indices.defined() ? selection.indices.describe() : "undefined",
             t.compact_rows);
  return t;
}

// Kg / Vg [g1 - g0, Hk, D] of one pass, gathered from k / v.
std::pair<Tensor, Tensor> gather(const GatherTables& t, const Pass& pass, const Tensor& k, const Tensor& v,
                                 const attn::LrsaSelection& selection) {
  const int64_t rows = pass.g1 - pass.g0, Hk = k.size(1), D = k.size(2);
  Tensor kg = Tensor::empty({rows, Hk, D}, DType::BF16, k.device());
  Tensor vg = Tensor::empty({rows, Hk, D}, DType::BF16, k.device());
  const int64_t items = rows * Hk * (D / kChunk);
  gather_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
      static_cast<const bf16_t*>(k.data()), static_cast<const bf16_t*>(v.data()), k.stride(0), v.stride(0),
      t.source.data_as<int32_t>() + pass.g0, selection.indices.data_as<int32_t>(), t.compact_rows, rows, int(Hk),
      int(D), static_cast<bf16_t*>(kg.data()), static_cast<bf16_t*>(vg.data()));
  LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: gather");
  return {kg, vg};
}

float softmax_scale(const Tensor& q) { return 1.0f / std::sqrt(float(q.size(2))); }

// A grouped pass's dQ [rows, Hq, D], zero, laid out with q's row stride: cuDNN's packed backward
// needs dq and q alike (attn_cudnn.h).
Tensor grouped_dq(int64_t rows, const Tensor& q) {
  const int64_t Hq = q.size(1), D = q.size(2);
  return Tensor::zeros({rows, q.stride(0)}, DType::BF16, q.device()).slice(1, 0, Hq * D).unflatten(1, {Hq, D});
}

}  // namespace

int64_t lrsa_cudnn_gather_bytes(const attn::SeqLayout& layout, const attn::LrsaParams& params, int64_t kv_heads,
                                int64_t head_dim) {
  return gather_bytes(lrsa_gather::gathered_rows(layout.cu_seqlens, params, kLrsaCudnnGroup), kv_heads, head_dim);
}

bool lrsa_cudnn_usable(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                       int64_t kv_heads, int64_t head_dim, DType dtype) {
  // cuDNN's bf16 with D 64 / 128 is also what the gather and reduction kernels need (16-byte
  // chunks of bf16 rows); the plan's row numbers and codes are i32.
  if (!cudnn_attention_supported(head_dim, dtype)) return false;
  const PassMemory memory{q_heads, kv_heads, head_dim};
  int64_t rows = 0;
  bool fits = true;
  using lrsa_gather::VirtualSeq;
  lrsa_gather::for_each_sequence(layout.cu_seqlens, config.lrsa, kLrsaCudnnGroup, [&](const VirtualSeq& s) {
    rows += s.kv_rows();
    fits = fits && double(memory(1, s.kv_rows(), s.kv_rows(), s.q1 - s.q0)) <= budget_bytes(config);
  });
  return fits && rows < (int64_t(1) << 31);
}

int64_t lrsa_cudnn_pass_count(const attn::SeqLayout& layout, const attn::AttentionConfig& config, int64_t q_heads,
                              int64_t kv_heads, int64_t head_dim) {
  const lrsa_gather::GatherPlan plan = lrsa_gather::plan_gather(layout.cu_seqlens, config.lrsa, kLrsaCudnnGroup);
  return int64_t(lrsa_gather::plan_passes(plan, budget_bytes(config), PassMemory{q_heads, kv_heads, head_dim}).size()) - 1;
}

void lrsa_cudnn_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                        const attn::SeqLayout& layout, attn::AttentionForward& result) {
  const GatherTables& t = prepare("lrsa_cudnn_forward", config, q, k, v, layout, result.selection);
  const int64_t Hq = q.size(1), D = q.size(2);
  for (const Pass& pass : t.passes) {
    const auto [kg, vg] = gather(t, pass, k, v, result.selection);
    const int64_t rows = pass.q1 - pass.q0;
    Tensor out = result.out.slice(0, pass.q0, pass.q1), lse_view = result.lse.slice(1, pass.q0, pass.q1);
    if (!pass.spans.causal) {  // after every causal pass (they come first): merge into their results
      Tensor out_g = Tensor::empty({rows, Hq, D}, DType::BF16, q.device());
      Tensor lse_g = Tensor::empty({Hq, rows}, DType::F32, q.device());
      cudnn_varlen_forward(q.slice(0, pass.q0, pass.q1), kg, vg, pass.spans, softmax_scale(q), out_g, lse_g);
      merge_out_kernel<<<grid_size(rows * Hq * (D / kChunk), 256), 256, 0, current_stream()>>>(
          static_cast<bf16_t*>(out.data()), out.stride(0), lse_view.data_as<float>(), result.lse.stride(0),
          static_cast<const bf16_t*>(out_g.data()), lse_g.data_as<float>(), rows, int(Hq), int(D));
      LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: merge a grouped pass's out");
      merge_lse_kernel<<<grid_size(rows * Hq, 256), 256, 0, current_stream()>>>(
          lse_view.data_as<float>(), result.lse.stride(0), lse_g.data_as<float>(), rows, int(Hq));
      LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: merge a grouped pass's lse");
      continue;
    }
    // cudnn_varlen_forward takes a contiguous [Hq, rows] log-sum-exp: the view itself when the
    // pass has all rows, else a copy.
    Tensor lse = lse_view.is_contiguous() ? lse_view : Tensor::empty(lse_view.shape(), DType::F32, q.device());
    cudnn_varlen_forward(q.slice(0, pass.q0, pass.q1), kg, vg, pass.spans, softmax_scale(q), out, lse);
    if (!lse_view.is_contiguous()) lse_view.copy_(lse);
  }
}

void lrsa_cudnn_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                         const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                         Tensor& dq, Tensor& dk, Tensor& dv) {
  const char* op = "lrsa_cudnn_backward";
  // cuDNN's backward sums dQ with atomics (kernels/attn_cudnn.h): not bitwise reproducible.
  LRSA_CHECK(!config.deterministic, "{}: attention.deterministic needs the native kernels (cuDNN's dQ uses atomics)", op);
  const GatherTables& t = prepare(op, config, q, k, v, layout, saved.selection);
  check_rows(op, "dk", dk);
  check_rows(op, "dv", dv);
  const int64_t T = q.size(0), Hq = q.size(1), Hk = k.size(1), D = k.size(2);
  const Tensor inv = Tensor::empty({Hk, T}, DType::I32, q.device());
  LRSA_CUDA_CHECK(cudaMemsetAsync(inv.data(), 0xff, size_t(Hk * T) * sizeof(int32_t), current_stream()));  // -1
  if (t.compact_rows > 0) {
    inverse_kernel<<<grid_size(t.compact_rows * Hk, 256), 256, 0, current_stream()>>>(
        saved.selection.indices.data_as<int32_t>(), t.compact_rows, int(Hk), T, inv.data_as<int32_t>());
    LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: inverse selection");
  }
  // Running fp32 sums of dK / dV between passes (one pass needs none).
  Tensor acc_k, acc_v;
  if (t.passes.size() > 1) {
    acc_k = Tensor::empty({T, Hk, D}, DType::F32, q.device());
    acc_v = Tensor::empty({T, Hk, D}, DType::F32, q.device());
  }
  for (size_t i = 0; i < t.passes.size(); ++i) {
    const Pass& pass = t.passes[i];
    const auto [kg, vg] = gather(t, pass, k, v, saved.selection);
    Tensor dkg = Tensor::empty(kg.shape(), DType::BF16, q.device());
    Tensor dvg = Tensor::empty(vg.shape(), DType::BF16, q.device());
    // Causal passes write their rows' dq; grouped ones add theirs to it (gap rows add zero).
    Tensor dq_rows = dq.slice(0, pass.q0, pass.q1);
    Tensor dq_pass = pass.spans.causal ? dq_rows : grouped_dq(pass.q1 - pass.q0, q);
    const Tensor lse = saved.lse.slice(1, pass.q0, pass.q1).contiguous();  // a copy unless one pass
    cudnn_varlen_backward(q.slice(0, pass.q0, pass.q1), kg, vg, saved.out.slice(0, pass.q0, pass.q1), lse,
                          dout.slice(0, pass.q0, pass.q1), pass.spans, softmax_scale(q), dq_pass, dkg, dvg);
    if (!pass.spans.causal) add(dq_rows, dq_pass, dq_rows);
    const int64_t items = pass.reduce_rows * Hk * (D / kChunk);
    reduce_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
        static_cast<const bf16_t*>(dkg.data()), static_cast<const bf16_t*>(dvg.data()), pass.g0, pass.g1, t.lists(),
        inv.data_as<int32_t>(), T, int(Hk), int(D), pass.reduce_rows, pass.fresh, i + 1 == t.passes.size(),
        acc_k.defined() ? acc_k.data_as<float>() : nullptr, acc_v.defined() ? acc_v.data_as<float>() : nullptr,
        static_cast<bf16_t*>(dk.data()), static_cast<bf16_t*>(dv.data()), dk.stride(0), dv.stride(0));
    LRSA_CUDA_CHECK_LAUNCH("lrsa_cudnn: reduce gathered gradients");
  }
}

}  // namespace lrsa::cuda
#endif
