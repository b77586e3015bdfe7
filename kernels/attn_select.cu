// LagKV selection on the GPU (docs/lrsa-spec.md, "Selection"), in three kernels so that even a
// few partitions spread over the whole GPU:
//   1. lag_range_kernel, per (partition, KV head): channel minimum and range of K and V over the
//      reference partition p + 1 (min/max are exact in any order).
//   2. lag_std_kernel, one thread per (KV head, K or V, candidate row): the Bessel-corrected
//      standard deviation of the row's normalized channels.
//   3. select_rank_kernel, per (partition, KV head): softmax over the partition's rows for K and
//      V, score = sK + lambda sV, rank, and the K best rows in position order.
// The arithmetic mirrors the CPU implementation (src/attn/selection.cpp) operation for
// operation so that both pick the same rows: normalized values in fp32, the per-row sums over
// channels in fp64 in channel order, the softmax in fp64 with its total summed in row order by
// one thread, and no fused multiply-adds (explicit _rn intrinsics). Only fp64 exp can differ
// from the host's by an ulp, which matters only for scores tied to ~1e-16.
// Top K: row j is selected when fewer than K rows beat it (higher score, or equal score and
// lower position), which is the spec's tie rule; selected rows are written in position order.
#include <cfloat>

#include "attn_common.cuh"

namespace lrsa::cuda {
namespace attn_detail {
namespace {

struct SelectArgs {
  const void* k;
  const void* v;
  int64_t k_stride, v_stride;  // row strides (elements)
  const int* part_start;       // [P] first row of each selectable partition
  int L, K, D, P, Hk;
  double lambda;
  float* range;     // [P, Hk, 2 (K, V), 2 (min, range), D]
  double* row_std;  // [P, Hk, 2 (K, V), L]
  int* out;         // [Hk, P, K]
};

// Rows of K (z = 0) or V (z = 1) of KV head hk.
template <typename T>
__device__ __forceinline__ const T* z_rows(const SelectArgs& a, int z, int hk, int64_t* stride) {
  *stride = z == 0 ? a.k_stride : a.v_stride;
  return static_cast<const T*>(z == 0 ? a.k : a.v) + int64_t(hk) * a.D;
}

// 1. Channel minimum and range. Thread (column = (z, c), group) scans every groups-th row of
// the reference partition; the groups' results are combined in shared memory.
constexpr int kRangeThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kRangeThreads) lag_range_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int part = blockIdx.x, hk = blockIdx.y, D = a.D, cols = 2 * D, groups = kRangeThreads / cols;
  float* lo_s = reinterpret_cast<float*>(smem);  // [groups][cols]
  float* hi_s = lo_s + groups * cols;            // [groups][cols]
  const int col = threadIdx.x % cols, group = threadIdx.x / cols;
  if (group < groups) {
    const int z = col / D, c = col % D;
    int64_t stride = 0;
    const T* x = z_rows<T>(a, z, hk, &stride);
    const int64_t first = a.part_start[part] + a.L;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t r = first + group; r < first + a.L; r += groups) {
      const float v = to_float(x[r * stride + c]);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    lo_s[group * cols + col] = lo;
    hi_s[group * cols + col] = hi;
  }
  __syncthreads();
  if (threadIdx.x < cols) {
    float lo = lo_s[col], hi = hi_s[col];
    for (int g = 1; g < groups; ++g) {
      lo = fminf(lo, lo_s[g * cols + col]);
      hi = fmaxf(hi, hi_s[g * cols + col]);
    }
    const int z = col / D, c = col % D;
    float* out = a.range + ((int64_t(part) * a.Hk + hk) * 2 + z) * 2 * D;
    out[c] = lo;
    out[D + c] = fmaxf(__fsub_rn(hi, lo), 1e-6f);
  }
}

// 2. Standard deviation (Bessel) of one candidate row's normalized channels, in channel order.
constexpr int kStdThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kStdThreads) lag_std_kernel(const SelectArgs a) {
  const int chunks = (2 * a.L + kStdThreads - 1) / kStdThreads;  // blocks per (partition, head)
  const int i = int(blockIdx.x % chunks) * kStdThreads + threadIdx.x;
  const int hk = int(blockIdx.x / chunks % a.Hk), part = int(blockIdx.x / chunks / a.Hk);
  if (i >= 2 * a.L) return;
  const int z = i / a.L, j = i % a.L, D = a.D;
  int64_t stride = 0;
  const T* row = z_rows<T>(a, z, hk, &stride) + (a.part_start[part] + j) * stride;
  const float* mn = a.range + ((int64_t(part) * a.Hk + hk) * 2 + z) * 2 * D;
  const float* rg = mn + D;
  double sum = 0.0;
  for (int c = 0; c < D; ++c) sum = __dadd_rn(sum, double(__fdiv_rn(__fsub_rn(to_float(row[c]), mn[c]), rg[c])));
  const double mean = __ddiv_rn(sum, double(D));
  double squares = 0.0;
  for (int c = 0; c < D; ++c) {
    const double d = __dsub_rn(double(__fdiv_rn(__fsub_rn(to_float(row[c]), mn[c]), rg[c])), mean);
    squares = __dadd_rn(squares, __dmul_rn(d, d));
  }
  a.row_std[((int64_t(part) * a.Hk + hk) * 2 + z) * a.L + j] = __dsqrt_rn(__ddiv_rn(squares, double(D - 1)));
}

// 3. Softmax, score, rank, output. Shared memory: the K and V values of the L rows [2][L] (f64:
// std, then softmax, then the score in the first half).
constexpr int kRankThreads = 1024;

size_t rank_smem_bytes(int L) { return size_t(2) * L * sizeof(double); }

__device__ __forceinline__ double block_max(double x, double* scratch) {
  for (int o = 16; o > 0; o /= 2) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = -DBL_MAX;
  for (int w = 0; w < kRankThreads / 32; ++w) x = fmax(x, scratch[w]);
  return x;
}

__global__ void __launch_bounds__(kRankThreads) select_rank_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = a.L;
  double* s = reinterpret_cast<double*>(smem);  // [2][L]
  __shared__ double scratch[kRankThreads / 32];
  __shared__ double total[2];
  __shared__ int warp_count[kRankThreads / 32];

  const int part = blockIdx.x, hk = blockIdx.y, tid = threadIdx.x;
  const double* row_std = a.row_std + (int64_t(part) * a.Hk + hk) * 2 * L;
  for (int i = tid; i < 2 * L; i += kRankThreads) s[i] = row_std[i];
  __syncthreads();

  // Softmax over the L rows, separately for K and V.
  for (int z = 0; z < 2; ++z) {
    double top = -DBL_MAX;
    for (int j = tid; j < L; j += kRankThreads) top = fmax(top, s[z * L + j]);
    top = block_max(top, scratch);
    for (int j = tid; j < L; j += kRankThreads) s[z * L + j] = exp(__dsub_rn(s[z * L + j], top));
  }
  __syncthreads();
  if (tid % 32 == 0 && tid / 32 < 2) {  // the host's order: one running sum over the rows
    const double* e = s + (tid / 32) * L;
    double t = 0.0;
    for (int j = 0; j < L; ++j) t = __dadd_rn(t, e[j]);
    total[tid / 32] = t;
  }
  __syncthreads();

  // score = softmax_K + lambda * softmax_V (NaN ranks last, as on the host).
  for (int j = tid; j < L; j += kRankThreads) {
    double score = __dadd_rn(__ddiv_rn(s[j], total[0]), __dmul_rn(a.lambda, __ddiv_rn(s[L + j], total[1])));
    if (isnan(score)) score = -INFINITY;
    s[j] = score;
  }
  __syncthreads();

  // Rank, select, and write the selected rows in position order.
  const int lane = tid % 32, warp = tid / 32;
  const int64_t first = a.part_start[part];
  int* out = a.out + (int64_t(hk) * a.P + part) * a.K;
  int written = 0;
  for (int j0 = 0; j0 < L; j0 += kRankThreads) {
    const int j = j0 + tid;
    bool selected = false;
    if (j < L) {
      const double mine = s[j];
      int beaten_by = 0;
      for (int i = 0; i < L; ++i) {
        const double other = s[i];
        beaten_by += (other > mine) || (other == mine && i < j);
      }
      selected = beaten_by < a.K;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, selected);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before = written;
    for (int w = 0; w < warp; ++w) before += warp_count[w];
    if (selected) out[before + __popc(ballot & ((1u << lane) - 1u))] = int(first + j);
    for (int w = 0; w < kRankThreads / 32; ++w) written += warp_count[w];
    __syncthreads();  // warp_count is rewritten by the next round
  }
}

}  // namespace
}  // namespace attn_detail

void lrsa_select(const Tensor& k, const Tensor& v, const attn::SeqLayout& layout, const attn::LrsaParams& params,
                 attn::LrsaSelection& selection) {
  using namespace attn_detail;
  const char* op = "lrsa_select (CUDA)";
  const int64_t Hk = k.size(1), D = k.size(2), L = params.lag, K = params.kept();
  LRSA_CUDA_CHECK(cudaSetDevice(k.device().index));
  attn::AttentionConfig config;
  config.mode = attn::Mode::Lrsa;
  config.lrsa = params;
  const WorkTables& tables = work_tables(config, layout, k.device());
  LRSA_CHECK(tables.n_parts == selection.num_parts() && selection.indices.defined() &&
                 selection.indices.shape() == Shape({Hk, selection.num_parts(), K}),
             "{}: selection must arrive with part_offset and indices [{}, {}, {}] allocated, got {}", op, Hk,
             tables.n_parts, K, selection.indices.defined() ? selection.indices.describe() : "undefined");
  if (tables.n_parts == 0) return;
  const int64_t P = tables.n_parts;
  LRSA_CHECK(2 * D <= kRangeThreads, "{}: head dimension {} exceeds the selection kernel's {}", op, D,
             kRangeThreads / 2);
  LRSA_CHECK(Hk <= 65535, "{}: {} KV heads exceed the selection grid", op, Hk);
  const size_t rank_smem = rank_smem_bytes(int(L));
  int max_smem = 0;
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, k.device().index));
  LRSA_CHECK(rank_smem + 2048 <= size_t(max_smem),
             "{}: lag {} needs {} bytes of shared memory per block, more than the device's {}; use a smaller lag", op,
             L, rank_smem, max_smem);
  const Tensor range = Tensor::empty({P, Hk, 2, 2, D}, DType::F32, k.device());
  const Tensor row_std = Tensor::empty({P * Hk * 2 * L * int64_t(sizeof(double))}, DType::U8, k.device());
  SelectArgs a{k.data(),
               v.data(),
               k.stride(0),
               v.stride(0),
               tables.part_start(),
               int(L),
               int(K),
               int(D),
               int(P),
               int(Hk),
               double(params.score_v_ratio),
               range.data_as<float>(),
               static_cast<double*>(row_std.data()),
               selection.indices.data_as<int32_t>()};
  const size_t range_smem = size_t(2) * (kRangeThreads / (2 * D)) * 2 * D * sizeof(float);
  dispatch_float(k.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    lag_range_kernel<T><<<dim3(unsigned(P), unsigned(Hk)), kRangeThreads, range_smem, current_stream()>>>(a);
    LRSA_CUDA_CHECK_LAUNCH("lrsa_select: channel ranges");
    const int64_t std_blocks = (2 * L + kStdThreads - 1) / kStdThreads * P * Hk;
    lag_std_kernel<T><<<unsigned(std_blocks), kStdThreads, 0, current_stream()>>>(a);
    LRSA_CUDA_CHECK_LAUNCH("lrsa_select: row deviations");
  });
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(select_rank_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(rank_smem)));
  select_rank_kernel<<<dim3(unsigned(P), unsigned(Hk)), kRankThreads, rank_smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("lrsa_select: rank");
}

}  // namespace lrsa::cuda
