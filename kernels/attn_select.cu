// LagKV selection on the GPU (docs/lrsa-spec.md, "Selection"), in three kernels so that even a
// few partitions spread over the whole GPU:
//   1. lag_range_kernel, per (partition, KV head, K or V): channel minimum and range over the
//      reference partition p + 1 (min/max are exact in any order), rows read in 16-byte packs.
//   2. lag_std_kernel, per (block of rows, partition, KV head, K or V): the rows' normalized
//      channels staged in shared memory by coalesced loads, then one thread per row takes the
//      Bessel-corrected standard deviation over its channels.
//   3. select_rank_kernel, per (partition, KV head): softmax over the partition's rows for K and
//      V, score = sK + lambda sV, a bitonic sort of the rows by (score descending, position
//      ascending), and the K first rows written in position order.
// The arithmetic mirrors the CPU implementation (src/attn/selection.cpp) operation for
// operation so that both pick the same rows: normalized values in fp32, the per-row sums over
// channels in fp64 in channel order, the softmax in fp64 with its total summed in row order by
// one thread, and no fused multiply-adds (explicit _rn intrinsics). Only fp64 exp can differ
// from the host's by an ulp, which matters only for scores tied to ~1e-16.
// Top K: the sort order is the spec's (higher score first, ties to the lower position) and is
// total, so its K first rows are exactly the rows fewer than K rows beat.
// The first version (one thread per row reading its own row, and a rank count of L^2 fp64
// comparisons per partition) took 0.24 ms per layer at 32K tokens, 14:2 heads x d64, on the
// H200: 13% of the cuDNN LRSA forward. docs/benchmarks.md has the timings of both.
#include <bit>
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

// Channel statistics of (partition, KV head, z): [2 (min, range), D] floats.
__device__ __forceinline__ float* range_of(const SelectArgs& a, int part, int hk, int z) {
  return a.range + ((int64_t(part) * a.Hk + hk) * 2 + z) * 2 * a.D;
}

// 1. Channel minimum and range. A row is read as D / V packs of V channels; thread (pack,
// group) scans every groups-th row of the reference partition, four rows' loads in flight; the
// groups' results are combined in shared memory.
constexpr int kRangeThreads = 512;

template <typename T, int V>
__global__ void __launch_bounds__(kRangeThreads) lag_range_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int part = blockIdx.x, hk = blockIdx.y, z = blockIdx.z, D = a.D;
  const int packs = D / V, groups = kRangeThreads / packs;
  float* lo_s = reinterpret_cast<float*>(smem);  // [groups][D]
  float* hi_s = lo_s + groups * D;               // [groups][D]
  const int pack = threadIdx.x % packs, group = threadIdx.x / packs;
  if (group < groups) {
    int64_t stride = 0;
    const T* x = z_rows<T>(a, z, hk, &stride) + pack * V;
    const int64_t first = a.part_start[part] + a.L;
    float lo[V], hi[V];
#pragma unroll
    for (int e = 0; e < V; ++e) lo[e] = INFINITY, hi[e] = -INFINITY;
#pragma unroll 4
    for (int r = group; r < a.L; r += groups) {
      float v[V];
      load_floats<V>(x + (first + r) * stride, v);
#pragma unroll
      for (int e = 0; e < V; ++e) lo[e] = fminf(lo[e], v[e]), hi[e] = fmaxf(hi[e], v[e]);
    }
#pragma unroll
    for (int e = 0; e < V; ++e) lo_s[group * D + pack * V + e] = lo[e], hi_s[group * D + pack * V + e] = hi[e];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kRangeThreads) {
    float lo = lo_s[c], hi = hi_s[c];
    for (int g = 1; g < groups; ++g) lo = fminf(lo, lo_s[g * D + c]), hi = fmaxf(hi, hi_s[g * D + c]);
    float* out = range_of(a, part, hk, z);
    out[c] = lo;
    out[D + c] = fmaxf(__fsub_rn(hi, lo), 1e-6f);
  }
}

size_t range_smem_bytes(int D, int V) { return size_t(2) * (kRangeThreads / (D / V)) * D * sizeof(float); }

// 2. Standard deviation (Bessel) of each candidate row's normalized channels, in channel order.
// The block's kStdRows rows are normalized as they are loaded (coalesced packs) into shared
// memory, [row][D + 1] floats (with that stride, consecutive rows start in different banks), then
// thread r sums row r's channels in order.
constexpr int kStdRows = 128;
constexpr int kMaxSelectD = 256;  // 128.5 KiB of staged rows per block

size_t std_smem_bytes(int D) { return size_t(kStdRows) * (D + 1) * sizeof(float); }

template <typename T, int V>
__global__ void __launch_bounds__(kStdRows) lag_std_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* zs = reinterpret_cast<float*>(smem);  // [kStdRows][D + 1]
  const int chunks = (a.L + kStdRows - 1) / kStdRows;  // blocks per (partition, head, z)
  const int j0 = int(blockIdx.x % chunks) * kStdRows;
  const int z = int(blockIdx.x / chunks % 2), hk = int(blockIdx.x / chunks / 2 % a.Hk);
  const int part = int(blockIdx.x / chunks / 2 / a.Hk);
  const int D = a.D, packs = D / V, rows = min(kStdRows, a.L - j0);
  int64_t stride = 0;
  const T* x = z_rows<T>(a, z, hk, &stride) + (a.part_start[part] + j0) * stride;
  const float* mn = range_of(a, part, hk, z);
  const float* rg = mn + D;
  for (int i = threadIdx.x; i < rows * packs; i += kStdRows) {
    const int r = i / packs, c0 = (i % packs) * V;
    float v[V];
    load_floats<V>(x + r * stride + c0, v);
#pragma unroll
    for (int e = 0; e < V; ++e) zs[r * (D + 1) + c0 + e] = __fdiv_rn(__fsub_rn(v[e], mn[c0 + e]), rg[c0 + e]);
  }
  __syncthreads();
  const int r = threadIdx.x;
  if (r >= rows) return;
  const float* row = zs + r * (D + 1);
  double sum = 0.0;
  for (int c = 0; c < D; ++c) sum = __dadd_rn(sum, double(row[c]));
  const double mean = __ddiv_rn(sum, double(D));
  double squares = 0.0;
  for (int c = 0; c < D; ++c) {
    const double d = __dsub_rn(double(row[c]), mean);
    squares = __dadd_rn(squares, __dmul_rn(d, d));
  }
  a.row_std[((int64_t(part) * a.Hk + hk) * 2 + z) * a.L + j0 + r] = __dsqrt_rn(__ddiv_rn(squares, double(D - 1)));
}

// 3. Softmax, score, sort, output. Shared memory: s [Lp + L] doubles (the K values, padded to
// Lp = the power of two >= L, then the V values; std, then softmax, then the score in the first
// L), row [Lp] ints (the rows in sort order), kept [L] flags.
constexpr int kRankThreads = 1024;

size_t rank_smem_bytes(int L) {
  const int Lp = int(std::bit_ceil(unsigned(L)));
  return size_t(Lp + L) * sizeof(double) + size_t(Lp) * sizeof(int) + size_t(L);
}

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

// Row i comes before row j in the selection order: higher score, or equal score and lower row.
__device__ __forceinline__ bool comes_before(double si, int i, double sj, int j) {
  return si > sj || (si == sj && i < j);
}

__global__ void __launch_bounds__(kRankThreads) select_rank_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = a.L, Lp = int(std::bit_ceil(unsigned(L)));
  double* s = reinterpret_cast<double*>(smem);  // [Lp] K, then [L] V
  double* sv = s + Lp;
  int* row = reinterpret_cast<int*>(sv + L);  // [Lp]
  unsigned char* kept = reinterpret_cast<unsigned char*>(row + Lp);  // [L]
  __shared__ double scratch[kRankThreads / 32];
  __shared__ double total[2];
  __shared__ int warp_count[kRankThreads / 32];

  const int part = blockIdx.x, hk = blockIdx.y, tid = threadIdx.x;
  const double* row_std = a.row_std + (int64_t(part) * a.Hk + hk) * 2 * L;
  for (int i = tid; i < L; i += kRankThreads) s[i] = row_std[i], sv[i] = row_std[L + i], kept[i] = 0;
  __syncthreads();

  // Softmax over the L rows, separately for K and V.
  for (int z = 0; z < 2; ++z) {
    double* x = z == 0 ? s : sv;
    double top = -DBL_MAX;
    for (int j = tid; j < L; j += kRankThreads) top = fmax(top, x[j]);
    top = block_max(top, scratch);
    for (int j = tid; j < L; j += kRankThreads) x[j] = exp(__dsub_rn(x[j], top));
  }
  __syncthreads();
  if (tid % 32 == 0 && tid / 32 < 2) {  // the host's order: one running sum over the rows
    const double* e = tid == 0 ? s : sv;
    double t = 0.0;
#pragma unroll 16  // the loads run ahead; the adds stay one chain in row order
    for (int j = 0; j < L; ++j) t = __dadd_rn(t, e[j]);
    total[tid / 32] = t;
  }
  __syncthreads();

  // score = softmax_K + lambda * softmax_V (NaN ranks last, as on the host); padding after.
  for (int j = tid; j < Lp; j += kRankThreads) {
    double score = -INFINITY;
    if (j < L) {
      score = __dadd_rn(__ddiv_rn(s[j], total[0]), __dmul_rn(a.lambda, __ddiv_rn(sv[j], total[1])));
      if (isnan(score)) score = -INFINITY;
    }
    s[j] = score;
    row[j] = j;  // padding rows j >= L sort after every real row, even one scored -inf
  }
  __syncthreads();

  // Bitonic sort of (s, row) into the selection order; log2(Lp) (log2(Lp) + 1) / 2 steps.
  for (int size = 2; size <= Lp; size *= 2) {
    for (int half = size / 2; half > 0; half /= 2) {
      for (int i = tid; i < Lp; i += kRankThreads) {
        const int j = i ^ half;
        if (j > i) {
          const bool forward = (i & size) == 0;  // this run ends up in selection order
          const bool swap = forward ? comes_before(s[j], row[j], s[i], row[i]) : comes_before(s[i], row[i], s[j], row[j]);
          if (swap) {
            const double ts = s[i];
            s[i] = s[j];
            s[j] = ts;
            const int tr = row[i];
            row[i] = row[j];
            row[j] = tr;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < a.K; i += kRankThreads) kept[row[i]] = 1;
  __syncthreads();

  // Write the kept rows in position order.
  const int lane = tid % 32, warp = tid / 32;
  const int64_t first = a.part_start[part];
  int* out = a.out + (int64_t(hk) * a.P + part) * a.K;
  int written = 0;
  for (int j0 = 0; j0 < L; j0 += kRankThreads) {
    const int j = j0 + tid;
    const bool selected = j < L && kept[j];
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
  LRSA_CHECK(D <= kMaxSelectD, "{}: head dimension {} exceeds the selection kernels' {}", op, D, kMaxSelectD);
  LRSA_CHECK(Hk <= 65535, "{}: {} KV heads exceed the selection grid", op, Hk);
  const size_t rank_smem = rank_smem_bytes(int(L)), std_smem = std_smem_bytes(int(D));
  int max_smem = 0;
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, k.device().index));
  LRSA_CHECK(rank_smem + 2048 <= size_t(max_smem),
             "{}: lag {} needs {} bytes of shared memory per block, more than the device's {}; use a smaller lag", op,
             L, rank_smem, max_smem);
  LRSA_CHECK(std_smem <= size_t(max_smem),
             "{}: head dimension {} needs {} bytes of shared memory per block, more than the device's {}", op, D,
             std_smem, max_smem);
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
  dispatch_float(k.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int kVector = pack_of<T>;
    const bool vector = D % kVector == 0 && k.stride(0) % kVector == 0 && v.stride(0) % kVector == 0 &&
                        aligned16(k.data()) && aligned16(v.data());
    dispatch_pack<T>(vector, [&](auto V) {
      lag_range_kernel<T, V()><<<dim3(unsigned(P), unsigned(Hk), 2), kRangeThreads, range_smem_bytes(int(D), V()),
                                 current_stream()>>>(a);
      LRSA_CUDA_CHECK_LAUNCH("lrsa_select: channel ranges");
      const auto std_kernel = lag_std_kernel<T, V()>;
      LRSA_CUDA_CHECK(cudaFuncSetAttribute(std_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(std_smem)));
      const int64_t std_blocks = (L + kStdRows - 1) / kStdRows * 2 * Hk * P;
      std_kernel<<<unsigned(std_blocks), kStdRows, std_smem, current_stream()>>>(a);
      LRSA_CUDA_CHECK_LAUNCH("lrsa_select: row deviations");
    });
  });
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(select_rank_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(rank_smem)));
  select_rank_kernel<<<dim3(unsigned(P), unsigned(Hk)), kRankThreads, rank_smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("lrsa_select: rank");
}

}  // namespace lrsa::cuda
