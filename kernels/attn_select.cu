// LagKV selection on the GPU (docs/lrsa-spec.md, "Selection"): one CTA per (selectable
// partition, KV head). It mirrors the CPU implementation (src/attn/selection.cpp) operation for
// operation so that both pick the same rows: channel ranges and normalized values in fp32, the
// per-row sums over channels in fp64 in channel order, the softmax in fp64 with its total summed
// in row order by one thread, and no fused multiply-adds (explicit _rn intrinsics). Only fp64
// exp can differ from the host's by an ulp, which matters only for scores tied to ~1e-16.
// Top K: row j is selected when fewer than K rows beat it (higher score, or equal score and
// lower position), which is the spec's tie rule; selected rows are written in position order.
#include <cfloat>

#include "attn_common.cuh"

namespace lrsa::cuda {
namespace attn_detail {
namespace {

constexpr int kSelectThreads = 256;

struct SelectArgs {
  const void* k;
  const void* v;
  int64_t k_stride, v_stride;  // row strides (elements)
  const int* part_start;       // [P] first row of each selectable partition
  int L, K, D, P;
  double lambda;
  int* out;  // [Hk, P, K]
};

// Shared memory: channel minimum and range of K and V [2][D] (f32), then the per-row values
// of K and V [2][L] (f64: std, then softmax, then score in the first half).
size_t select_smem_bytes(int L, int D) { return size_t(4) * D * sizeof(float) + size_t(2) * L * sizeof(double); }

__device__ __forceinline__ double block_max(double x, double* scratch) {
  for (int o = 16; o > 0; o /= 2) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = -DBL_MAX;
  for (int w = 0; w < kSelectThreads / 32; ++w) x = fmax(x, scratch[w]);
  return x;
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads) lrsa_select_kernel(const SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int D = a.D, L = a.L;
  double* s = reinterpret_cast<double*>(smem);                  // [2][L]
  float* mn = reinterpret_cast<float*>(s + 2 * L);                // [2][D]
  float* range = mn + 2 * D;                                      // [2][D]
  __shared__ double scratch[kSelectThreads / 32];
  __shared__ double total[2];
  __shared__ int warp_count[kSelectThreads / 32];

  const int part = blockIdx.x, hk = blockIdx.y, tid = threadIdx.x;
  const int64_t first = a.part_start[part];
  const T* k = static_cast<const T*>(a.k) + int64_t(hk) * D;
  const T* v = static_cast<const T*>(a.v) + int64_t(hk) * D;

  // 1. Channel minimum and range over the reference partition (rows first + L .. first + 2L - 1).
  for (int i = tid; i < 2 * D; i += kSelectThreads) {
    const int z = i / D, c = i % D;
    const T* x_base = z == 0 ? k : v;
    const int64_t stride = z == 0 ? a.k_stride : a.v_stride;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t r = first + L; r < first + 2 * L; ++r) {
      const float x = to_float(x_base[r * stride + c]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    mn[i] = lo;
    range[i] = fmaxf(__fsub_rn(hi, lo), 1e-6f);
  }
  __syncthreads();

  // 2. Standard deviation (Bessel) of each candidate row's normalized channels.
  for (int i = tid; i < 2 * L; i += kSelectThreads) {
    const int z = i / L, j = i % L;
    const T* row = (z == 0 ? k : v) + (first + j) * (z == 0 ? a.k_stride : a.v_stride);
    const float* m = mn + z * D;
    const float* rg = range + z * D;
    double sum = 0.0;
    for (int c = 0; c < D; ++c) sum = __dadd_rn(sum, double(__fdiv_rn(__fsub_rn(to_float(row[c]), m[c]), rg[c])));
    const double mean = __ddiv_rn(sum, double(D));
    double squares = 0.0;
    for (int c = 0; c < D; ++c) {
      const double d = __dsub_rn(double(__fdiv_rn(__fsub_rn(to_float(row[c]), m[c]), rg[c])), mean);
      squares = __dadd_rn(squares, __dmul_rn(d, d));
    }
    s[i] = __dsqrt_rn(__ddiv_rn(squares, double(D - 1)));
  }
  __syncthreads();

  // 3. Softmax over the L rows, separately for K and V.
  for (int z = 0; z < 2; ++z) {
    double top = -DBL_MAX;
    for (int j = tid; j < L; j += kSelectThreads) top = fmax(top, s[z * L + j]);
    top = block_max(top, scratch);
    for (int j = tid; j < L; j += kSelectThreads) s[z * L + j] = exp(__dsub_rn(s[z * L + j], top));
  }
  __syncthreads();
  if (tid % 32 == 0 && tid / 32 < 2) {  // the host's order: one running sum over the rows
    const double* e = s + (tid / 32) * L;
    double t = 0.0;
    for (int j = 0; j < L; ++j) t = __dadd_rn(t, e[j]);
    total[tid / 32] = t;
  }
  __syncthreads();

  // 4. score = softmax_K + lambda * softmax_V (NaN ranks last, as on the host).
  for (int j = tid; j < L; j += kSelectThreads) {
    double score = __dadd_rn(__ddiv_rn(s[j], total[0]), __dmul_rn(a.lambda, __ddiv_rn(s[L + j], total[1])));
    if (isnan(score)) score = -INFINITY;
    s[j] = score;
  }
  __syncthreads();

  // 5. Rank, select, and write the selected rows in position order.
  const int lane = tid % 32, warp = tid / 32;
  int* out = a.out + (int64_t(hk) * a.P + part) * a.K;
  int written = 0;
  for (int j0 = 0; j0 < L; j0 += kSelectThreads) {
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
    for (int w = 0; w < kSelectThreads / 32; ++w) written += warp_count[w];
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
  const size_t smem = select_smem_bytes(int(L), int(D));
  int max_smem = 0;
  LRSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, k.device().index));
  LRSA_CHECK(smem + 2048 <= size_t(max_smem),
             "{}: lag {} with head dimension {} needs {} bytes of shared memory per block, more than the device's {}; "
             "use a smaller lag",
             op, L, D, smem, max_smem);
  LRSA_CHECK(Hk <= 65535, "{}: {} KV heads exceed the grid limit", op, Hk);
  SelectArgs a{k.data(), v.data(), k.stride(0), v.stride(0), tables.part_start(), int(L), int(K), int(D),
               tables.n_parts, double(params.score_v_ratio), selection.indices.data_as<int32_t>()};
  dispatch_float(k.dtype(), op, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    LRSA_CUDA_CHECK(
        cudaFuncSetAttribute(lrsa_select_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    lrsa_select_kernel<T><<<dim3(unsigned(tables.n_parts), unsigned(Hk)), kSelectThreads, smem, current_stream()>>>(a);
  });
  LRSA_CUDA_CHECK_LAUNCH("lrsa_select");
}

}  // namespace lrsa::cuda
