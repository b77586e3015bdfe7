// LagKV selection on the GPU (docs/lrsa-spec.md, "Selection"), in three kernels so that even a
// few partitions spread over the whole GPU:
//   1. lag_range_kernel, per (partition, KV head, K or V): channel minimum and range over the
//      reference partition p + 1 (min/max are exact in any order), rows read in 16-byte packs.
//   2. lag_std_kernel, per (block of rows, partition, KV head, K or V): a thread per row reads
//      its row's normalized channels and takes their Bessel-corrected standard deviation.
//   3. select_rank_kernel, per (partition, KV head): softmax over the partition's rows for K and
//      V, score = sK + lambda sV, a bitonic sort of the rows by (score descending, position
//      ascending), and the K first rows written in position order.
// The arithmetic mirrors the CPU implementation (src/attn/selection.cpp) operation for
// operation so that both pick the same rows: normalized values in fp32, the per-row sums over
// channels in fp64 in channel order, the softmax in fp64 with its total a pairwise sum in the
// host's tree order, and no fused multiply-adds (explicit _rn intrinsics). Only fp64 exp can differ
// from the host's by an ulp, which matters only for scores tied to ~1e-16.
// Top K: the sort order is the spec's (higher score first, ties to the lower position) and is
// total, so its K first rows are exactly the rows fewer than K rows beat.
// The first version (one thread per row reading its own row, and a rank count of L^2 fp64
// comparisons per partition) took 0.24 ms per layer at 32K tokens, 14:2 heads x d64, on the
// H200: 13% of the cuDNN LRSA forward; the second (its softmax total summed by one thread, every step
// of the bitonic sort behind a block barrier, loads one at a time) 0.071 ms. docs/benchmarks.md has
// the timings.
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

// 1. Channel minimum and range. A row is read as D / V packs of V channels; thread (pack, group)
// scans every groups-th row of the reference partition, kRangeInFlight loads at a time (at L = 1024,
// D = 64, bf16: its 16 rows in two rounds); a tree over the groups in shared memory combines them.
constexpr int kRangeThreads = 512, kRangeInFlight = 8;

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
    for (int r0 = group; r0 < a.L; r0 += kRangeInFlight * groups) {
      RawPack<V, T> packed[kRangeInFlight];  // in the storage type: 64 registers at most
#pragma unroll
      for (int i = 0; i < kRangeInFlight; ++i)
        if (r0 + i * groups < a.L) packed[i].load(x + (first + r0 + i * groups) * stride);
#pragma unroll
      for (int i = 0; i < kRangeInFlight; ++i)
        if (r0 + i * groups < a.L) {
          float v[V];
          packed[i].floats(v);
#pragma unroll
          for (int e = 0; e < V; ++e) lo[e] = fminf(lo[e], v[e]), hi[e] = fmaxf(hi[e], v[e]);
        }
    }
#pragma unroll
    for (int e = 0; e < V; ++e) lo_s[group * D + pack * V + e] = lo[e], hi_s[group * D + pack * V + e] = hi[e];
  }
  __syncthreads();
  for (int n = groups; n > 1;) {  // groups n .. 2h - 1 into 0 .. n - h - 1 (min and max are exact in any order)
    const int h = (n + 1) / 2;
    for (int i = threadIdx.x; i < (n - h) * D; i += kRangeThreads) {
      lo_s[i] = fminf(lo_s[i], lo_s[i + h * D]);
      hi_s[i] = fmaxf(hi_s[i], hi_s[i + h * D]);
    }
    n = h;
    __syncthreads();
  }
  for (int c = threadIdx.x; c < D; c += kRangeThreads) {
    float* out = range_of(a, part, hk, z);
    out[c] = lo_s[c];
    out[D + c] = fmaxf(__fsub_rn(hi_s[c], lo_s[c]), 1e-6f);
  }
}

size_t range_smem_bytes(int D, int V) { return size_t(2) * (kRangeThreads / (D / V)) * D * sizeof(float); }

// 2. Standard deviation (Bessel) of each candidate row's normalized channels, in channel order. A
// thread per row reads its row straight from global memory, 16-byte packs normalized as they
// arrive, sums them, then reads the row again (L1 or L2) for the squares. Staging rows in shared
// memory instead ([rows][D + 1] floats) held an SM to 12 warps, too few to hide the serial fp64
// sums; without it (32-40 registers) an SM holds 48-64. At 32K tokens, 28:4 x d128 on the H200:
// 70-79 us against 91-99 (Nsight Compute); 14:2 x d64 took 22 us either way.
constexpr int kStdRows = 128;
constexpr int kMaxSelectD = 256;  // the channel ranges' copy in shared memory

template <typename T, int V>
__global__ void __launch_bounds__(kStdRows) lag_std_kernel(const SelectArgs a) {
  __shared__ float mn[kMaxSelectD], rg[kMaxSelectD];
  const int chunks = (a.L + kStdRows - 1) / kStdRows;  // blocks per (partition, head, z)
  const int j0 = int(blockIdx.x % chunks) * kStdRows;
  const int z = int(blockIdx.x / chunks % 2), hk = int(blockIdx.x / chunks / 2 % a.Hk);
  const int part = int(blockIdx.x / chunks / 2 / a.Hk);
  const int D = a.D;
  const float* range = range_of(a, part, hk, z);
  for (int c = threadIdx.x; c < D; c += kStdRows) mn[c] = range[c], rg[c] = range[D + c];
  __syncthreads();
  const int j = j0 + int(threadIdx.x);
  if (j >= a.L) return;
  int64_t stride = 0;
  const T* x = z_rows<T>(a, z, hk, &stride) + (a.part_start[part] + j) * stride;
  auto normalized = [&](int c0, float (&values)[V]) {
    RawPack<V, T> packed;
    packed.load(x + c0);
    packed.floats(values);
#pragma unroll
    for (int e = 0; e < V; ++e) values[e] = __fdiv_rn(__fsub_rn(values[e], mn[c0 + e]), rg[c0 + e]);
  };
  double sum = 0.0;
#pragma unroll 4
  for (int c0 = 0; c0 < D; c0 += V) {
    float values[V];
    normalized(c0, values);
#pragma unroll
    for (int e = 0; e < V; ++e) sum = __dadd_rn(sum, double(values[e]));
  }
  const double mean = __ddiv_rn(sum, double(D));
  double squares = 0.0;
#pragma unroll 4
  for (int c0 = 0; c0 < D; c0 += V) {
    float values[V];
    normalized(c0, values);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const double d = __dsub_rn(double(values[e]), mean);
      squares = __dadd_rn(squares, __dmul_rn(d, d));
    }
  }
  a.row_std[((int64_t(part) * a.Hk + hk) * 2 + z) * a.L + j] = __dsqrt_rn(__ddiv_rn(squares, double(D - 1)));
}

// 3. Softmax, score, sort, output, per (partition, KV head). The rows are padded to N, a power of
// two and at least a block of kRankThreads, so that thread t holds rows t, t + kRankThreads, ...
// Shared memory: key [N] doubles (the K values: std, softmax, then the score), value [N] doubles
// (the V values), row [N] ints (the rows in sort order), kept [L] flags.
constexpr int kRankThreads = 1024;
constexpr int kMaxRankRows = int(attn::kCudaMaxLag);  // the softmax's tree holds N / kRankThreads values per thread

__host__ __device__ int rank_rows(int L) {
  const int padded = int(std::bit_ceil(unsigned(L)));
  return padded > kRankThreads ? padded : kRankThreads;
}

size_t rank_smem_bytes(int L) {
  return size_t(rank_rows(L)) * (2 * sizeof(double) + sizeof(int)) + size_t(L);
}

// Row i comes before row j in the selection order: higher score, or equal score and lower row.
__device__ __forceinline__ bool comes_before(double si, int i, double sj, int j) {
  return si > sj || (si == sj && i < j);
}

// The pairwise sums of k [N] and v [N] at once, in the host's order (softmax_rows in
// src/attn/selection.cpp: x[i] += x[i + h] for h = N / 2 .. 1): the halves at least a block apart
// within each thread, then across the block in shared memory, then the last 32 by shuffles in every
// warp, so that every thread gets both totals; tree [2][kRankThreads] is scratch.
__device__ __forceinline__ double2 tree_sums(const double* k, const double* v, int N, double* tree) {
  const int tid = threadIdx.x, per_thread = N / kRankThreads;
  double ak[kMaxRankRows / kRankThreads], av[kMaxRankRows / kRankThreads];
#pragma unroll
  for (int i = 0; i < kMaxRankRows / kRankThreads; ++i)
    if (i < per_thread) ak[i] = k[tid + i * kRankThreads], av[i] = v[tid + i * kRankThreads];
#pragma unroll
  for (int h = kMaxRankRows / kRankThreads / 2; h > 0; h /= 2)
#pragma unroll
    for (int i = 0; i < h; ++i)
      if (h < per_thread) ak[i] = __dadd_rn(ak[i], ak[i + h]), av[i] = __dadd_rn(av[i], av[i + h]);
  tree[tid] = ak[0];
  tree[kRankThreads + tid] = av[0];
  __syncthreads();
  for (int h = kRankThreads / 2; h >= 32; h /= 2) {
    if (tid < h) {
      tree[tid] = __dadd_rn(tree[tid], tree[tid + h]);
      tree[kRankThreads + tid] = __dadd_rn(tree[kRankThreads + tid], tree[kRankThreads + tid + h]);
    }
    __syncthreads();
  }
  const int lane = tid % 32;
  double tk = tree[lane], tv = tree[kRankThreads + lane];  // every warp, so that each has the totals
  for (int h = 16; h > 0; h /= 2) {
    tk = __dadd_rn(tk, __shfl_down_sync(0xffffffffu, tk, h));
    tv = __dadd_rn(tv, __shfl_down_sync(0xffffffffu, tv, h));
  }
  return {__shfl_sync(0xffffffffu, tk, 0), __shfl_sync(0xffffffffu, tv, 0)};
}

// One compare-exchange of the bitonic sort into selection order, for the row this thread holds at
// position i, against its partner at i ^ half in the same warp (half < 32).
__device__ __forceinline__ void exchange_in_warp(double& s, int& r, int i, int half, int size) {
  const double ps = __shfl_xor_sync(0xffffffffu, s, half);
  const int pr = __shfl_xor_sync(0xffffffffu, r, half);
  const bool forward = (i & size) == 0;                  // this run ends up in selection order
  const bool want_first = ((i & half) == 0) == forward;  // the lower position of a forward run
  if (want_first == comes_before(ps, pr, s, r)) s = ps, r = pr;
}

__global__ void __launch_bounds__(kRankThreads) select_rank_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int L = a.L, N = rank_rows(L);
  double* key = reinterpret_cast<double*>(smem);  // [N]
  double* value = key + N;                        // [N]
  int* row = reinterpret_cast<int*>(value + N);   // [N]
  unsigned char* kept = reinterpret_cast<unsigned char*>(row + N);  // [L]
  __shared__ double scratch[2][kRankThreads / 32];
  __shared__ double tree[2 * kRankThreads];
  __shared__ int warp_count[kRankThreads / 32];

  const int part = blockIdx.x, hk = blockIdx.y, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const double* row_std = a.row_std + (int64_t(part) * a.Hk + hk) * 2 * L;

  // Softmax over the L rows, for K and V together: the maxima, the exponentials (padding 0), the totals.
  double top_k = -DBL_MAX, top_v = -DBL_MAX;
  for (int i = tid; i < N; i += kRankThreads) {
    const double sk = i < L ? row_std[i] : 0.0, sv = i < L ? row_std[L + i] : 0.0;
    if (i < L) top_k = fmax(top_k, sk), top_v = fmax(top_v, sv), kept[i] = 0;
    key[i] = sk;
    value[i] = sv;
  }
  const auto warp_max = [&] {  // both maxima over the warp's lanes, in every lane
    for (int o = 16; o > 0; o /= 2) {
      top_k = fmax(top_k, __shfl_xor_sync(0xffffffffu, top_k, o));
      top_v = fmax(top_v, __shfl_xor_sync(0xffffffffu, top_v, o));
    }
  };
  warp_max();
  if (lane == 0) scratch[0][warp] = top_k, scratch[1][warp] = top_v;
  __syncthreads();
  top_k = scratch[0][lane], top_v = scratch[1][lane];
  warp_max();
  for (int i = tid; i < N; i += kRankThreads) {
    key[i] = i < L ? exp(__dsub_rn(key[i], top_k)) : 0.0;
    value[i] = i < L ? exp(__dsub_rn(value[i], top_v)) : 0.0;
  }
  __syncthreads();
  const double2 total = tree_sums(key, value, N, tree);

  // score = softmax_K + lambda * softmax_V (NaN ranks last, as on the host); padding after.
  for (int i = tid; i < N; i += kRankThreads) {
    double score = -INFINITY;
    if (i < L) {
      score = __dadd_rn(__ddiv_rn(key[i], total.x), __dmul_rn(a.lambda, __ddiv_rn(value[i], total.y)));
      if (isnan(score)) score = -INFINITY;
    }
    key[i] = score;
    row[i] = i;  // padding rows i >= L sort after every real row, even one scored -inf
  }
  __syncthreads();

  // Bitonic sort of (key, row) into the selection order. Compare-exchanges less than a warp apart
  // run in registers (shuffles, no barrier), the others through shared memory, one barrier each:
  // 21 barriers for N = 1024 instead of 55.
  auto in_warp = [&](int size_begin, int size_end, int top_half) {  // sizes [size_begin, size_end]
    for (int i = tid; i < N; i += kRankThreads) {
      double s = key[i];
      int r = row[i];
      for (int size = size_begin; size <= size_end; size *= 2)
        for (int half = min(size / 2, top_half); half > 0; half /= 2) exchange_in_warp(s, r, i, half, size);
      key[i] = s;
      row[i] = r;
    }
    __syncthreads();
  };
  in_warp(2, 32, 16);
  for (int size = 64; size <= N; size *= 2) {
    for (int half = size / 2; half >= 32; half /= 2) {
      for (int p = tid; p < N / 2; p += kRankThreads) {  // pair p: positions i < j = i + half
        const int i = ((p & ~(half - 1)) << 1) | (p & (half - 1)), j = i + half;
        const bool forward = (i & size) == 0;
        const double si = key[i], sj = key[j];
        const int ri = row[i], rj = row[j];
        if (forward ? comes_before(sj, rj, si, ri) : comes_before(si, ri, sj, rj)) {
          key[i] = sj, key[j] = si;
          row[i] = rj, row[j] = ri;
        }
      }
      __syncthreads();
    }
    in_warp(size, size, 16);
  }
  for (int i = tid; i < a.K; i += kRankThreads) kept[row[i]] = 1;
  __syncthreads();

  // Write the kept rows in position order.
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
  LRSA_CHECK(L <= kMaxRankRows, "{}: lag {} exceeds the selection kernels' {}; use a smaller lag", op, L,
             kMaxRankRows);
  const size_t rank_smem = rank_smem_bytes(int(L));
  int max_smem = 0;
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, k.device().index));
  cudaFuncAttributes rank_attributes{};
  LRSA_CUDA_CHECK(cudaFuncGetAttributes(&rank_attributes, select_rank_kernel));
  LRSA_CHECK(rank_smem + rank_attributes.sharedSizeBytes <= size_t(max_smem),
             "{}: lag {} needs {} bytes of shared memory per block, more than the device's {}; use a smaller lag", op,
             L, rank_smem + rank_attributes.sharedSizeBytes, max_smem);
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
      const auto range_kernel = lag_range_kernel<T, V()>;
      const int range_smem = int(range_smem_bytes(int(D), V()));  // 32 KiB at most (bf16: 2 x 512 x 8 floats)
      LRSA_CUDA_CHECK(cudaFuncSetAttribute(range_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, range_smem));
      range_kernel<<<dim3(unsigned(P), unsigned(Hk), 2), kRangeThreads, range_smem, current_stream()>>>(a);
      LRSA_CUDA_CHECK_LAUNCH("lrsa_select: channel ranges");
      const int64_t std_blocks = (L + kStdRows - 1) / kStdRows * 2 * Hk * P;
      lag_std_kernel<T, V()><<<unsigned(std_blocks), kStdRows, 0, current_stream()>>>(a);
      LRSA_CUDA_CHECK_LAUNCH("lrsa_select: row deviations");
    });
  });
  LRSA_CUDA_CHECK(cudaFuncSetAttribute(select_rank_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(rank_smem)));
  select_rank_kernel<<<dim3(unsigned(P), unsigned(Hk)), kRankThreads, rank_smem, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("lrsa_select: rank");
}

}  // namespace lrsa::cuda
