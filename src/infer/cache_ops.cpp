#include "lrsa/infer/cache_ops.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "lrsa/core/dispatch.h"
#include "lrsa/infer/cuda_infer.h"

namespace lrsa::infer {
namespace {

inline float load_f32(float x) { return x; }
inline float load_f32(bf16 x) { return bf16_to_float(x); }
inline void store_f32(float x, float& dst) { dst = x; }
inline void store_f32(float x, bf16& dst) { dst = float_to_bf16(x); }

template <typename T>
void cache_attention_cpu(const Tensor& q, const Tensor& kc, const Tensor& vc, const std::vector<int64_t>& seq,
                         const std::vector<int64_t>& limit, Tensor& out) {
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), Hk = kc.size(2), G = Hq / Hk;
  const float scale = 1.0f / std::sqrt(float(D));
  const T* qp = q.data_as<T>();
  const T* kp = kc.data_as<T>();
  const T* vp = vc.data_as<T>();
  T* op = out.data_as<T>();
#pragma omp parallel
  {
    std::vector<float> scores, qf(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t rows = limit[size_t(n)], g = h / G;
        const T* qrow = qp + n * q.stride(0) + h * q.stride(1);
        for (int64_t d = 0; d < D; ++d) qf[size_t(d)] = load_f32(qrow[d]) * scale;
        const T* kbase = kp + seq[size_t(n)] * kc.stride(0) + g * kc.stride(2);
        const T* vbase = vp + seq[size_t(n)] * vc.stride(0) + g * vc.stride(2);
        scores.resize(size_t(rows));
        float mx = -INFINITY;
        for (int64_t r = 0; r < rows; ++r) {
          const T* krow = kbase + r * kc.stride(1);
          float s = 0;
          for (int64_t d = 0; d < D; ++d) s += qf[size_t(d)] * load_f32(krow[d]);
          scores[size_t(r)] = s;
          mx = std::max(mx, s);
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float sum = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const float p = std::exp(scores[size_t(r)] - mx);
          sum += p;
          const T* vrow = vbase + r * vc.stride(1);
          for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += p * load_f32(vrow[d]);
        }
        T* orow = op + n * out.stride(0) + h * out.stride(1);
        for (int64_t d = 0; d < D; ++d) store_f32(acc[size_t(d)] / sum, orow[d]);
      }
    }
  }
}

template <typename T>
void cache_append_cpu(const Tensor& rows, const std::vector<int64_t>& seq, const std::vector<int64_t>& limit, Tensor& cache) {
  const int64_t N = rows.size(0), Hk = rows.size(1), D = rows.size(2);
  const T* src = rows.data_as<T>();
  T* dst = cache.data_as<T>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < Hk; ++h)
      std::copy_n(src + n * rows.stride(0) + h * rows.stride(1), D,
                  dst + seq[size_t(n)] * cache.stride(0) + (limit[size_t(n)] - 1) * cache.stride(1) + h * cache.stride(2));
}

template <typename T>
void gather_head_rows_cpu(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) {
  const int64_t n = dst.size(0), Hk = dst.size(1), D = dst.size(2);
  const T* sp = src.data_as<T>();
  T* dp = dst.data_as<T>();
  for (int64_t h = 0; h < Hk; ++h)
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(sp + index[size_t(h * n + i)] * src.stride(0) + h * src.stride(1), D,
                  dp + i * dst.stride(0) + h * dst.stride(1));
}

// [.., rows, heads, D] with the last two dimensions contiguous.
void check_rows(const Tensor& t, const char* op, const char* name, int64_t dims, DType dtype, Device device) {
  LRSA_CHECK(t.defined() && t.dim() == dims, "{}: {} must have {} dimensions, got {}", op, name, dims,
             t.defined() ? t.describe() : "undefined");
  LRSA_CHECK(t.dtype() == dtype && t.device() == device, "{}: {} must be {} on {}, got {}", op, name,
             dtype_name(dtype), device.str(), t.describe());
  LRSA_CHECK(t.stride(dims - 1) == 1 && t.stride(dims - 2) == t.size(dims - 1),
             "{}: the last two dimensions of {} must be contiguous, got {}", op, name, t.describe());
}

// a (defined, f32 or bf16) and b [N, H, D], the caches [B, rows, Hk, D], all of a's dtype and
// device with contiguous rows.
void check_cache_call(const char* op, const char* a_name, const Tensor& a, const char* b_name, const Tensor& b,
                      const Tensor& k_cache, const Tensor& v_cache) {
  LRSA_CHECK(a.defined(), "{}: {} is undefined", op, a_name);
  const DType dt = a.dtype();
  LRSA_CHECK(dt == DType::F32 || dt == DType::BF16, "{}: dtype must be f32 or bf16, got {}", op, a.describe());
  check_rows(a, op, a_name, 3, dt, a.device());
  check_rows(b, op, b_name, 3, dt, a.device());
  check_rows(k_cache, op, "k_cache", 4, dt, a.device());
  check_rows(v_cache, op, "v_cache", 4, dt, a.device());
}

// seq and limit: i32 [N], one entry per query/token.
void check_seq_limit(const char* op, const Tensor& seq, const Tensor& limit, int64_t N) {
  check_tensor(seq, op, "seq", {DType::I32});
  check_tensor(limit, op, "limit", {DType::I32});
  check_shape(seq, op, "seq", {N});
  check_shape(limit, op, "limit", {N});
}

// seq and limit read back for the CPU path, every entry within the cache [B, rows, ...]:
// item n (`what`: query or token) of sequence seq[n] sees/writes rows below limit[n].
std::pair<std::vector<int64_t>, std::vector<int64_t>> cache_positions(const char* op, const char* what, const Tensor& seq,
                                                                      const Tensor& limit, const Tensor& cache) {
  std::vector<int64_t> s = seq.to_ints(), lim = limit.to_ints();
  for (size_t n = 0; n < s.size(); ++n)
    LRSA_CHECK(s[n] >= 0 && s[n] < cache.size(0) && lim[n] >= 1 && lim[n] <= cache.size(1),
               "{}: {} {} has sequence {} and row limit {} outside the cache {}", op, what, n, s[n], lim[n],
               cache.describe());
  return {std::move(s), std::move(lim)};
}

}  // namespace

void cache_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                     const Tensor& limit, Tensor& out) {
  const char* op = "cache_attention";
  check_cache_call(op, "q", q, "out", out, k_cache, v_cache);
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), Hk = k_cache.size(2);
  LRSA_CHECK(out.shape() == q.shape(), "{}: out {} must have q's shape {}", op, out.describe(), q.describe());
  LRSA_CHECK(k_cache.shape() == v_cache.shape() && k_cache.size(3) == D && Hq % Hk == 0,
             "{}: k_cache {} / v_cache {} do not fit q {}", op, k_cache.describe(), v_cache.describe(), q.describe());
  check_seq_limit(op, seq, limit, N);
  LRSA_DISPATCH_CUDA(q.device(), op, cuda::cache_attention(q, k_cache, v_cache, seq, limit, out));
  const auto [s, lim] = cache_positions(op, "query", seq, limit, k_cache);
  if (q.dtype() == DType::F32) cache_attention_cpu<float>(q, k_cache, v_cache, s, lim, out);
  else cache_attention_cpu<bf16>(q, k_cache, v_cache, s, lim, out);
}

void cache_append(const Tensor& k, const Tensor& v, const Tensor& seq, const Tensor& limit, Tensor& k_cache,
                  Tensor& v_cache) {
  const char* op = "cache_append";
  check_cache_call(op, "k", k, "v", v, k_cache, v_cache);
  const int64_t N = k.size(0);
  LRSA_CHECK(v.shape() == k.shape() && k_cache.shape() == v_cache.shape() && k_cache.size(2) == k.size(1) &&
                 k_cache.size(3) == k.size(2),
             "{}: k {} / v {} do not fit k_cache {} / v_cache {}", op, k.describe(), v.describe(), k_cache.describe(),
             v_cache.describe());
  check_seq_limit(op, seq, limit, N);
  if (N == 0) return;
  LRSA_DISPATCH_CUDA(k.device(), op, cuda::cache_append(k, v, seq, limit, k_cache, v_cache));
  const auto [s, lim] = cache_positions(op, "token", seq, limit, k_cache);
  if (k.dtype() == DType::F32) {
    cache_append_cpu<float>(k, s, lim, k_cache);
    cache_append_cpu<float>(v, s, lim, v_cache);
  } else {
    cache_append_cpu<bf16>(k, s, lim, k_cache);
    cache_append_cpu<bf16>(v, s, lim, v_cache);
  }
}

void gather_head_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  const char* op = "gather_head_rows";
  LRSA_CHECK(src.defined(), "{}: src is undefined", op);
  const DType dt = src.dtype();
  const Device dev = src.device();
  check_rows(src, op, "src", 3, dt, dev);
  check_rows(dst, op, "dst", 3, dt, dev);
  const int64_t n = dst.size(0), Hk = dst.size(1);
  LRSA_CHECK(src.size(1) == Hk && src.size(2) == dst.size(2), "{}: src {} and dst {} differ in heads or head dim", op,
             src.describe(), dst.describe());
  check_tensor(index, op, "index", {DType::I32});
  check_shape(index, op, "index", {Hk, n});
  if (n == 0) return;
  LRSA_DISPATCH_CUDA(dev, op, cuda::gather_head_rows(src, index, dst));
  const std::vector<int64_t> idx = index.to_ints();
  for (int64_t i : idx)
    LRSA_CHECK(i >= 0 && i < src.size(0), "{}: row index {} outside src {}", op, i, src.describe());
  if (dt == DType::F32) gather_head_rows_cpu<float>(src, idx, dst);
  else if (dt == DType::BF16) gather_head_rows_cpu<bf16>(src, idx, dst);
  else fail("{}: dtype must be f32 or bf16, got {}", op, src.describe());
}

}  // namespace lrsa::infer
