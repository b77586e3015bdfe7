// Launchers of the Hopper attention kernels (kernels/attn_wgmma.h): the per-layout plan (query tiles,
// backward work units, tile-padded rows, where each compacted row comes from), the compacted rows
// [sink | Sel(0) | Sel(1) | ...] of every document, and the kernels around the backward. Built for
// sm_90a only (CMakeLists.txt: its own object library).
#include "attn_wgmma.h"

#include <cmath>
#include <list>
#include <vector>

#include "attn_wgmma_backward.cuh"
#include "attn_wgmma_forward.cuh"
#include "cuda_common.cuh"
#include "recent_cache.h"

namespace lrsa::cuda {
namespace {

using bf16_t = __nv_bfloat16;
using wgmma::Lrsa;

// The forward's variant per head dim, the fastest in dev/wgmma_attn_fwd.cu's runs: at d64 three
// consumer warpgroups (192 query rows a CTA), two K/V stages, no overlap or ping-pong, since the
// exponentials take one MUFU op each (docs/benchmarks.md, "Session 19"); at d128, where the GEMMs
// take twice as long, two consumers (O takes 64 registers) that overlap and take turns, three
// stages (session 24: 1-4% less time than without overlap, at every shape timed).
template <int kHeadDim>
struct ForwardVariant {
  static constexpr int kConsumers = kHeadDim == 64 ? 3 : 2, kStages = kHeadDim == 64 ? 2 : 3;
  static constexpr bool kOverlap = kHeadDim == 128, kPingPong = kHeadDim == 128;
  using Config = wgmma::fwd::Config<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
  static constexpr auto kernel = wgmma::fwd::attn_fwd_kernel<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
};

// The forward's query rows per CTA at a head dim.
int forward_block_rows(int64_t head_dim) {
  return head_dim == 64 ? ForwardVariant<64>::Config::kBlockM : ForwardVariant<128>::Config::kBlockM;
}

// One layout's plan: the documents and their compacted rows (CompactedRows), the forward's query
// tiles, the backward's work units, and the row at each row of the tile-padded sums (-1 at the pads).
struct Plan {
  std::vector<int> doc_start, compacted_start;  // [B + 1]
  int padded_rows = 0, n_query_tiles = 0, n_units = 0;
  wgmma::bwd::UnitOrder unit_order{};
  Tensor query_tiles, units, padded_source, compacted_source;  // i32 on the device
  // The persistent forward's item counter (ForwardItems), zero between launches: so one forward
  // launch at a time per plan, as on the one stream that runs a model's layers.
  Tensor next_item;
};

Lrsa lrsa_of(const attn::AttentionConfig& config) {
  if (config.mode != attn::Mode::Lrsa) return Lrsa(0, 0, 0);
  return Lrsa(int(config.lrsa.sink), int(config.lrsa.lag), int(config.lrsa.kept()));
}

template <typename Item>
Tensor upload_items(const std::vector<Item>& items, Device device) {
  static_assert(sizeof(Item) % sizeof(int) == 0, "items are ints");
  const int* ints = reinterpret_cast<const int*>(items.data());
  const std::vector<int64_t> values(ints, ints + items.size() * (sizeof(Item) / sizeof(int)));
  return Tensor::from_ints(values.empty() ? std::vector<int64_t>{0} : values,
                           {int64_t(std::max<size_t>(values.size(), 1))}, DType::I32, device);
}

Plan build_plan(const attn::AttentionConfig& config, const attn::SeqLayout& layout, int64_t Hq, int64_t Hk,
                int64_t head_dim, Device device) {
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  const Lrsa intervals = lrsa_of(config);
  Plan plan;
  plan.doc_start.assign(layout.cu_seqlens.begin(), layout.cu_seqlens.end());
  CompactedRows compacted;
  if (lrsa)
    compacted = compacted_rows(layout.cu_seqlens, config.lrsa);
  else
    compacted.start.assign(plan.doc_start.size(), 0);
  plan.compacted_start = compacted.start;
  std::vector<int64_t>& source = compacted.source;
  plan.padded_rows = wgmma::bwd::padded_begins(plan.doc_start, intervals).back();
  const std::vector<int> rows = wgmma::bwd::padded_rows_of(plan.doc_start, intervals);
  const auto tiles =
      wgmma::fwd::query_tiles(plan.doc_start, plan.compacted_start, intervals, forward_block_rows(head_dim));
  const auto units = wgmma::bwd::work_units(plan.doc_start, plan.compacted_start, intervals, int(Hq / Hk), int(Hk),
                                            multiprocessor_count());
  plan.n_query_tiles = int(tiles.size());
  plan.n_units = int(units.units.size());
  plan.unit_order = units.order;
  plan.query_tiles = upload_items(tiles, device);
  plan.units = upload_items(units.units, device);
  const std::vector<int> sources = wgmma::bwd::padded_sources(rows, plan.padded_rows);
  plan.padded_source = Tensor::from_ints(std::vector<int64_t>(sources.begin(), sources.end()),
                                         {int64_t(sources.size())}, DType::I32, device);
  if (source.empty()) source.push_back(0);  // a placeholder: no compacted rows
  plan.compacted_source = Tensor::from_ints(source, {int64_t(source.size())}, DType::I32, device);
  plan.next_item = Tensor::from_ints({0}, {1}, DType::I32, device);
  return plan;
}

struct PlanKey {
  int device;
  int64_t q_heads, kv_heads, head_dim;  // the head dim sets the forward's query tiles
  bool lrsa;
  int64_t sink, lag, kept;
  std::vector<int64_t> cu_seqlens;
  bool operator==(const PlanKey&) const = default;
};

// Every layer of a step shares one layout: a few recent plans cover a step and an evaluation.
const Plan& plan_for(const attn::AttentionConfig& config, const attn::SeqLayout& layout, int64_t Hq, int64_t Hk,
                     int64_t head_dim, Device device) {
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  PlanKey key{device.index, Hq, Hk, head_dim, lrsa, lrsa ? config.lrsa.sink : 0, lrsa ? config.lrsa.lag : 0,
              lrsa ? config.lrsa.kept() : 0, layout.cu_seqlens};
  thread_local std::list<std::pair<PlanKey, Plan>> cache;
  return recent(cache, 4, std::move(key), [&] { return build_plan(config, layout, Hq, Hk, head_dim, device); });
}

// ck/cv [rows, Hk, D]: compacted row c of head h is row source[c] (a sink) or the selection's entry
// -1 - source[c] of head h (indices [Hk, selected]); one thread per 16 bytes.
__global__ void gather_compacted_kernel(const bf16_t* __restrict__ k, int64_t k_stride, const bf16_t* __restrict__ v,
                                        int64_t v_stride, const int* __restrict__ source,
                                        const int* __restrict__ indices, int64_t selected, int rows, int Hk, int D,
                                        bf16_t* __restrict__ ck, bf16_t* __restrict__ cv) {
  const int chunks = D / 8;
  const int64_t n = int64_t(rows) * Hk * chunks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int chunk = int(i % chunks), head = int((i / chunks) % Hk), c = int(i / (int64_t(chunks) * Hk));
    const int s = source[c];
    const int64_t row = s >= 0 ? s : indices[head * selected + (-1 - s)];
    const int64_t column = int64_t(head) * D + chunk * 8;
    reinterpret_cast<uint4*>(ck + (int64_t(c) * Hk + head) * D)[chunk] =
        *reinterpret_cast<const uint4*>(k + row * k_stride + column);
    reinterpret_cast<uint4*>(cv + (int64_t(c) * Hk + head) * D)[chunk] =
        *reinterpret_cast<const uint4*>(v + row * v_stride + column);
  }
}

// compacted_row [Hk, T] (filled with -1 before): the compacted row of every sink and selected row.
__global__ void compacted_row_kernel(const int* __restrict__ source, const int* __restrict__ indices,
                                     int64_t selected, int rows, int Hk, int T, int* __restrict__ compacted_row) {
  const int64_t n = int64_t(rows) * Hk;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int head = int(i % Hk), c = int(i / Hk), s = source[c];
    const int row = s >= 0 ? s : indices[head * selected + (-1 - s)];
    compacted_row[int64_t(head) * T + row] = c;
  }
}

struct Compacted {
  Tensor ck, cv;  // [max(rows, 1), Hk, D] bf16
  int rows = 0;
};

Compacted gather_compacted(const Plan& plan, const Tensor& k, const Tensor& v, const attn::LrsaSelection& selection) {
  Compacted c;
  const int64_t Hk = k.size(1), D = k.size(2);
  c.rows = plan.compacted_start.back();
  c.ck = Tensor::empty({std::max(c.rows, 1), Hk, D}, DType::BF16, k.device());
  c.cv = Tensor::empty({std::max(c.rows, 1), Hk, D}, DType::BF16, k.device());
  if (c.rows == 0) return c;
  const int64_t selected = selection.indices.numel() / Hk;
  const int64_t items = int64_t(c.rows) * Hk * (D / 8);
  gather_compacted_kernel<<<grid_size(items, 256), 256, 0, current_stream()>>>(
      static_cast<const bf16_t*>(k.data()), k.stride(0), static_cast<const bf16_t*>(v.data()), v.stride(0),
      plan.compacted_source.data_as<int32_t>(), selection.indices.data_as<int32_t>(), selected, c.rows, int(Hk),
      int(D), static_cast<bf16_t*>(c.ck.data()), static_cast<bf16_t*>(c.cv.data()));
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): gather compacted rows");
  return c;
}

// Why t cannot be one of the kernels' [T, H, D] operands or results, or empty: bf16, each row's heads
// contiguous, rows 16-byte aligned (TMA, 32-bit loads and stores).
std::string bad_rows(const char* name, const Tensor& t) {
  if (t.dtype() == DType::BF16 && aligned16(t.data()) && t.stride(0) % 8 == 0 && t.stride(1) == t.size(2) &&
      t.stride(2) == 1)
    return "";
  return std::string(name) + " must be bf16 with each row's heads contiguous, 16-byte aligned rows and a row " +
         "stride that is a multiple of 8, got " + t.describe();
}

void check_rows(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  for (const auto& [name, t] : tensors) {
    const std::string why = bad_rows(name, *t);
    LRSA_CHECK(why.empty(), "{}: {}", op, why);
  }
}

CUtensorMap map_of(const char* op, const char* name, const Tensor& t, int64_t rows, int box_rows) {
  CUtensorMap map;
  LRSA_CHECK(hopper::tensor_map(map, static_cast<const bf16_t*>(t.data()), rows, int(t.size(1)), int(t.size(2)),
                                t.stride(0), box_rows),
             "{}: cuTensorMapEncodeTiled refused {} ({}, row stride {}) or the driver lacks it", op, name, t.describe(),
             t.stride(0));
  return map;
}

}  // namespace

CompactedRows compacted_rows(const std::vector<int64_t>& cu_seqlens, const attn::LrsaParams& params) {
  const int64_t sink = params.sink, kept = params.kept();
  CompactedRows rows;
  rows.start = {0};
  int64_t part = 0;  // the selection's partitions so far, over all documents
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    const int64_t begin = cu_seqlens[b], n = cu_seqlens[b + 1] - begin;
    for (int64_t j = 0; j < std::min(sink, n); ++j) rows.source.push_back(begin + j);
    for (int64_t p = 0; p < attn::selectable_partitions(n, params); ++p, ++part)
      for (int64_t i = 0; i < kept; ++i) rows.source.push_back(-1 - (part * kept + i));
    rows.start.push_back(int(rows.source.size()));
  }
  return rows;
}

std::string wgmma_unusable(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                           const attn::SeqLayout& layout) {
  if (config.deterministic)
    return "deterministic mode was asked for, and the backward adds dQ with reductions in global memory";
  if (q.size(2) != 64 && q.size(2) != 128) return "the wgmma kernels take head dim 64 or 128, q is " + q.describe();
  if (q.size(0) == 0) return "there are no rows";
  for (const Tensor* t : {&q, &k, &v}) {
    if (t->dtype() != DType::BF16) return "the wgmma kernels take bf16, got " + t->describe();
    const std::string why = bad_rows(t == &q ? "q" : t == &k ? "k" : "v", *t);
    if (!why.empty()) return why;
  }
  if (q.size(0) * std::max(q.size(1), k.size(1)) >= (int64_t(1) << 31))
    return "the wgmma kernels count rows x heads in 32 bits, and " + std::to_string(q.size(0)) + " x " +
           std::to_string(q.size(1)) + " does not fit";
  if (layout.max_seqlen() >= (int64_t(1) << 24))  // Lrsa::partition's float quotient (kernels/attn_wgmma.cuh)
    return "the wgmma kernels take documents shorter than 2^24 tokens, the longest here has " +
           std::to_string(layout.max_seqlen());
  int device = 0, major = 0, minor = 0;
  use_device(q);
  LRSA_CUDA_CHECK(cudaGetDevice(&device));
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9 || minor != 0)
    return "the wgmma kernels need an sm_90 device (wgmma, TMA), this one is sm_" + std::to_string(major) +
           std::to_string(minor);
  return "";
}

bool wgmma_preferred(const attn::AttentionConfig& config, const attn::SeqLayout& layout, int64_t head_dim) {
  // d64: one 14:2 document, LRSA, against the cuDNN path (docs/benchmarks.md, "Session 19"): our
  // forward and backward both took less time at 16K, 32K, 64K and 128K tokens; at 256K our forward
  // still did (66 against 70 ms) but our backward took 6% longer (217 against 205 ms): most pairs
  // are then the compacted history's whole tiles, where cuDNN's dense kernels run faster.
  // d128, one 28:4 document: the backward (docs/benchmarks.md, "Session 23") took 19% less time at
  // 16K, 13% at 32K; 1.5% more at 64K (50.9 against 50.1 ms), and at 128K the dev harness's
  // 186-193 ms against the cuDNN path's 174.6. The forward (session 24): 2% less at 16K, 1-6% less
  // at 32K (two runs); at 64K 2.7% less in one run and 7.6% more in another (before its overlap),
  // and both passes together took the cuDNN path's time there (67.8 against 67.9 ms): both stay
  // within 32K.
  const int64_t longest_document = head_dim == 64 ? 131072 : 32768;
  return config.mode == attn::Mode::Lrsa && layout.max_seqlen() <= longest_document;
}

bool use_wgmma(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
               const attn::SeqLayout& layout, bool auto_takes) {
  const bool asked = config.backend == attn::Backend::Wgmma;
  if (!asked && !(config.backend == attn::Backend::Auto && auto_takes)) return false;
  const std::string why = wgmma_unusable(config, q, k, v, layout);
  LRSA_CHECK(why.empty() || !asked, "{}: attention backend wgmma cannot run this call: {}", op, why);
  return why.empty();
}

namespace {

// The forward at head dim kHeadDim (wgmma_unusable has checked the call).
template <int kHeadDim>
void forward_at(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                const Tensor& v, const attn::SeqLayout& layout, attn::AttentionForward& result) {
  using Variant = ForwardVariant<kHeadDim>;
  using Config = typename Variant::Config;
  const int64_t T = q.size(0), Hq = q.size(1), Hk = k.size(1);
  check_rows(op, {{"result.out", &result.out}});
  const Plan& plan = plan_for(config, layout, Hq, Hk, kHeadDim, q.device());
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  const Compacted compacted = lrsa ? gather_compacted(plan, k, v, result.selection) : Compacted{};
  const CUtensorMap q_map = map_of(op, "q", q, T, Config::kBlockM);
  const CUtensorMap k_map = map_of(op, "k", k, T, wgmma::fwd::kBlockN);
  const CUtensorMap v_map = map_of(op, "v", v, T, wgmma::fwd::kBlockN);
  const int64_t rows = std::max(compacted.rows, 1);
  const CUtensorMap ck_map = lrsa ? map_of(op, "compacted k", compacted.ck, rows, wgmma::fwd::kBlockN) : k_map;
  const CUtensorMap cv_map = lrsa ? map_of(op, "compacted v", compacted.cv, rows, wgmma::fwd::kBlockN) : v_map;
  LRSA_CUDA_CHECK(
      cudaFuncSetAttribute(Variant::kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Config::kSmemBytes));
  const wgmma::fwd::ForwardItems items{int(plan.n_query_tiles * Hq), plan.next_item.data_as<int32_t>()};
  const unsigned ctas = resident_grid(Variant::kernel, Config::kThreads, Config::kSmemBytes, items.count);
  Variant::kernel<<<ctas, Config::kThreads, Config::kSmemBytes, current_stream()>>>(
      q_map, k_map, v_map, ck_map, cv_map, lrsa_of(config),
      reinterpret_cast<const wgmma::fwd::QueryTile*>(plan.query_tiles.data_as<int32_t>()), items,
      static_cast<bf16_t*>(result.out.data()), result.out.stride(0), result.lse.data_as<float>(), int(T), int(Hq),
      int(Hk), 1.0f / std::sqrt(float(kHeadDim)), nullptr);
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): forward");
}

// The backward at head dim kHeadDim (wgmma_unusable has checked the call).
template <int kHeadDim>
void backward_at(const char* op, const attn::AttentionConfig& config, const Tensor& q, const Tensor& k,
                 const Tensor& v, const attn::SeqLayout& layout, const attn::AttentionForward& saved,
                 const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t T = q.size(0), Hq = q.size(1), Hk = k.size(1);
  check_rows(op, {{"dout", &dout}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}, {"saved.out", &saved.out}});
  const Plan& plan = plan_for(config, layout, Hq, Hk, kHeadDim, q.device());
  const bool lrsa = config.mode == attn::Mode::Lrsa;
  const Compacted compacted = lrsa ? gather_compacted(plan, k, v, saved.selection) : Compacted{};
  const int rows = compacted.rows;
  const Device device = q.device();
  cudaStream_t stream = current_stream();

  // The compacted rows' positions, for adding their gradients to the raw rows'.
  Tensor compacted_row = Tensor::empty({Hk, T}, DType::I32, device);
  LRSA_CUDA_CHECK(cudaMemsetAsync(compacted_row.data(), 0xFF, size_t(Hk * T) * 4, stream));
  if (rows > 0) {
    compacted_row_kernel<<<grid_size(int64_t(rows) * Hk, 256), 256, 0, stream>>>(
        plan.compacted_source.data_as<int32_t>(), saved.selection.indices.data_as<int32_t>(),
        saved.selection.indices.numel() / Hk, rows, int(Hk), int(T), compacted_row.data_as<int32_t>());
    LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): compacted rows' positions");
  }

  // lse, D and the sums, tile-padded per document (BackwardSums): the D pass writes lse and D at every
  // padded row (0 at the pads, which the backward streams too) and zeroes the sums.
  const int padded = plan.padded_rows;
  const wgmma::bwd::BackwardSums sums_layout(Hq, padded, T, Hk, rows, kHeadDim);
  const Tensor sums = Tensor::empty({sums_layout.floats()}, DType::F32, device);
  const wgmma::bwd::BackwardSums::Parts part = sums_layout.parts(sums.data_as<float>());
  // check_rows above: both 16-byte aligned, so 16-byte loads
  delta_kernel<<<delta_blocks<bf16_t>(padded, int(Hq), kHeadDim), 256, 0, stream>>>(
      static_cast<const bf16_t*>(saved.out.data()), saved.out.stride(0), static_cast<const bf16_t*>(dout.data()),
      dout.stride(0), plan.padded_source.data_as<int32_t>(), int(T), int(Hq), kHeadDim, padded, true, part.d,
      sums_layout.delta_extras(sums.data_as<float>(), saved.lse.data_as<float>()));
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): lse, D and the zeroed sums");

  using wgmma::bwd::kBlock;
  constexpr int kStepRows = wgmma::bwd::Shape<kHeadDim>::kStepRows;  // Q's and dO's boxes
  const CUtensorMap q_map = map_of(op, "q", q, T, kStepRows), k_map = map_of(op, "k", k, T, kBlock);
  const CUtensorMap v_map = map_of(op, "v", v, T, kBlock), do_map = map_of(op, "dout", dout, T, kStepRows);
  const CUtensorMap ck_map = lrsa ? map_of(op, "compacted k", compacted.ck, std::max(rows, 1), kBlock) : k_map;
  const CUtensorMap cv_map = lrsa ? map_of(op, "compacted v", compacted.cv, std::max(rows, 1), kBlock) : v_map;
  constexpr wgmma::bwd::DqMode kDq = wgmma::bwd::kTrainingDq<kHeadDim>;
  constexpr int kSmemBytes = wgmma::bwd::Smem<kHeadDim, kDq>::kBytes;
  auto kernel = wgmma::bwd::attn_bwd_kernel<kHeadDim, kDq>;
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  // The kernel leaves dQ / scale in the sums; rounding scales it.
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  const unsigned grid = unsigned(plan.n_units * Hk);  // a CTA per unit and KV head (work_units)
  kernel<<<grid, wgmma::bwd::kThreads<kDq>, kSmemBytes, stream>>>(
      q_map, k_map, v_map, ck_map, cv_map, do_map, lrsa_of(config),
      reinterpret_cast<const wgmma::bwd::WorkUnit*>(plan.units.data_as<int32_t>()), plan.unit_order, part.lse, part.d,
      padded, part.dq, part.dk, part.dv, part.dkc, part.dvc, int(Hq), int(Hk), scale, nullptr);
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): backward");

  // A thread per 8 columns of a row (dQ: of two padded rows), the heads along y; about one wave of
  // blocks in all.
  auto rows_grid = [](int64_t rows, int64_t heads) {
    return dim3(unsigned((grid_size(rows * 8 * heads, 256) + heads - 1) / heads), unsigned(heads));
  };
  wgmma::bwd::round_dq_kernel<kHeadDim><<<rows_grid(padded / 2, Hq), 256, 0, stream>>>(
      part.dq, plan.padded_source.data_as<int32_t>(), scale, static_cast<bf16_t*>(dq.data()), dq.stride(0), padded);
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): dQ");
  wgmma::bwd::finalize_kv_kernel<kHeadDim><<<rows_grid(T, Hk), 256, 0, stream>>>(
      part.dk, part.dv, part.dkc, part.dvc, compacted_row.data_as<int32_t>(), static_cast<bf16_t*>(dk.data()),
      dk.stride(0), static_cast<bf16_t*>(dv.data()), dv.stride(0), int(T), int(Hk));
  LRSA_CUDA_CHECK_LAUNCH("attention (wgmma): dK, dV");
}

}  // namespace

void wgmma_forward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                   const attn::SeqLayout& layout, attn::AttentionForward& result) {
  const char* op = "attention_forward (wgmma)";
  use_device(q);
  if (q.size(2) == 64)
    forward_at<64>(op, config, q, k, v, layout, result);
  else
    forward_at<128>(op, config, q, k, v, layout, result);
}

void wgmma_backward(const attn::AttentionConfig& config, const Tensor& q, const Tensor& k, const Tensor& v,
                    const attn::SeqLayout& layout, const attn::AttentionForward& saved, const Tensor& dout,
                    Tensor& dq, Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward (wgmma)";
  use_device(q);
  if (q.size(2) == 64)
    backward_at<64>(op, config, q, k, v, layout, saved, dout, dq, dk, dv);
  else
    backward_at<128>(op, config, q, k, v, layout, saved, dout, dq, dk, dv);
}

}  // namespace lrsa::cuda
