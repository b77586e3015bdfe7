// cuDNN SDPA behind the varlen interface of attn_cudnn.h. Packed sequences are cuDNN "ragged"
// tensors: dims [B, H, S_max, D] with the BSHD strides of our [T, H, D] rows, plus a per-batch
// offset in elements (cu_seqlens[b] * row stride) computed on the device; the padding mask with
// per-sequence lengths bounds each sequence and the causal band is aligned bottom-right per
// sequence. cuDNN's stats are token-major [T, Hq] (ragged like q); small kernels move them to and
// from our lse [Hq, T]. One sequence over all rows (a batch of one document, the training bench's
// case) takes a plain graph instead: no ragged offsets, no padding mask, stats written straight
// into our lse, the form PyTorch's cuDNN SDPA uses. Built graphs are cached per shape
// (attn_cudnn.h lists the key).
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <bit>
#include <cmath>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>

#include "attn_cudnn.h"
#include "cuda_common.cuh"
#include "recent_cache.h"

namespace lrsa::cuda {
namespace {

namespace fe = cudnn_frontend;

#define LRSA_CUDNN_CHECK(call, op, shape)                                                                 \
  do {                                                                                                    \
    cudnnStatus_t lrsa_cudnn_status_ = (call);                                                            \
    if (lrsa_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::lrsa::fail("{} ({}): cuDNN error {} ({}) in {}", op, shape, int(lrsa_cudnn_status_),              \
                   cudnnGetErrorString(lrsa_cudnn_status_), #call);                                       \
  } while (0)

void check_fe(fe::error_t status, const char* op, const std::string& shape, const char* step) {
  if (status.is_bad())
    fail("{} ({}): cuDNN frontend {} failed: {} (code {})", op, shape, step, status.get_message(),
         int(status.get_code()));
}

// One handle per device and thread (a handle must not be used by two threads at once).
cudnnHandle_t handle_for(int device, const char* op) {
  thread_local std::unordered_map<int, cudnnHandle_t> handles;
  auto it = handles.find(device);
  if (it == handles.end()) {
    cudnnHandle_t h = nullptr;
    LRSA_CUDNN_CHECK(cudnnCreate(&h), op, "device " + std::to_string(device));
    it = handles.emplace(device, h).first;
  }
  LRSA_CUDNN_CHECK(cudnnSetStream(it->second, current_stream()), op, "device " + std::to_string(device));
  return it->second;
}

// ---------------------------------------------------------------------------------------------
// Device helpers

// Ragged offsets in elements for up to kMaxOffsets tensors, and the per-sequence lengths.
constexpr int kMaxOffsets = 9;
struct OffsetArgs {
  const int* cu[kMaxOffsets];  // cu_seqlens_q or cu_seqlens_kv, per tensor
  int64_t row_stride[kMaxOffsets];
  int64_t* offsets;  // [n, B + 1]
  int n;
  const int* cu_q;
  const int* cu_kv;
  int* len_q;   // [B]
  int* len_kv;  // [B]
  int B;
};

__global__ void ragged_offsets_kernel(const OffsetArgs a) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b > a.B) return;
  for (int i = 0; i < a.n; ++i) a.offsets[int64_t(i) * (a.B + 1) + b] = int64_t(a.cu[i][b]) * a.row_stride[i];
  if (b < a.B) {
    a.len_q[b] = a.cu_q[b + 1] - a.cu_q[b];
    a.len_kv[b] = a.cu_kv[b + 1] - a.cu_kv[b];
  }
}

// stats [T, H] (cuDNN, token-major) <-> lse [H, T] (ours), rows [0, end) only, end = the last
// sequence's end row (query_starts[B]): the spans cover those rows, less any gaps.
__global__ void stats_layout_kernel(float* __restrict__ stats, float* __restrict__ lse, const int* rows_end, int T,
                                    int H, bool to_lse) {
  const int rows = *rows_end;
  const int64_t n = int64_t(rows) * H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / H, h = i % H;
    if (to_lse) lse[h * T + t] = stats[i];
    else stats[i] = lse[h * T + t];
  }
}

void move_stats(float* stats, float* lse, const Tensor& q_starts, int64_t B, int64_t T, int64_t H, bool to_lse) {
  stats_layout_kernel<<<grid_size(T * H, 256), 256, 0, current_stream()>>>(stats, lse, q_starts.data_as<int32_t>() + B,
                                                                           int(T), int(H), to_lse);
  LRSA_CUDA_CHECK_LAUNCH("cudnn attention: stats layout");
}

// ---------------------------------------------------------------------------------------------
// Graphs

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kLenQ, kLenKv,
  kOffQ, kOffK, kOffV, kOffO, kOffStats, kOffDO, kOffDQ, kOffDK, kOffDV,
};

struct GraphKey {
  bool backward;
  bool plain;  // one sequence over all rows: exact dims, no ragged offsets, no padding mask
  bool causal;
  int device;
  int64_t Hq, Hk, D, B, s_q, s_kv, t_q, t_kv;  // s_* max lengths, t_* total rows, both bucketed
  uint32_t scale_bits;
  std::array<int64_t, 8> strides;  // row strides: q, k, v, o, dout, dq, dk, dv (0 when unused)
  bool operator==(const GraphKey&) const = default;
};

struct Built {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
};

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// [B, H, S, D] view of packed [T, H, D] rows with row stride `rs`, ragged by `offset` (plain
// graphs: none).
TensorPtr rows_tensor(fe::graph::Graph& g, const char* name, int64_t uid, int64_t B, int64_t H, int64_t S, int64_t D,
                      int64_t rs, const TensorPtr& offset) {
  auto t = g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({B, H, S, D})
                        .set_stride({S * rs, D, rs, 1}));
  if (offset) t->set_ragged_offset(offset);
  return t;
}
void as_rows(const TensorPtr& t, int64_t uid, int64_t B, int64_t H, int64_t S, int64_t D, int64_t rs,
             const TensorPtr& offset) {
  t->set_output(true).set_uid(uid).set_dim({B, H, S, D}).set_stride({S * rs, D, rs, 1});
  if (offset) t->set_ragged_offset(offset);
}
TensorPtr int_tensor(fe::graph::Graph& g, const char* name, int64_t uid, int64_t n, fe::DataType_t type) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({n, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(type));
}
// cuDNN's softmax stats [B, Hq, S, 1], token-major ([T, Hq] rows), ragged like q; plain graphs:
// head-major, which is our lse [Hq, T] itself.
void stats_layout(const TensorPtr& t, const GraphKey& k, const TensorPtr& offset) {
  t->set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim({k.B, k.Hq, k.s_q, 1});
  if (k.plain) {
    t->set_stride({k.Hq * k.s_q, k.s_q, 1, 1});
    return;
  }
  t->set_stride({k.s_q * k.Hq, 1, k.Hq, 1}).set_ragged_offset(offset);
}

Built build_graph(const GraphKey& k, cudnnHandle_t handle, const char* op, const std::string& shape) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const int64_t B1 = k.B + 1;
  auto off = [&](const char* name, int64_t uid) {
    return k.plain ? TensorPtr() : int_tensor(*g, name, uid, B1, fe::DataType_t::INT64);
  };
  const TensorPtr off_q = off("off_q", kOffQ), off_k = off("off_k", kOffK), off_v = off("off_v", kOffV),
                  off_o = off("off_o", kOffO), off_stats = off("off_stats", kOffStats);
  const TensorPtr q = rows_tensor(*g, "q", kQ, k.B, k.Hq, k.s_q, k.D, k.strides[0], off_q);
  const TensorPtr kt = rows_tensor(*g, "k", kK, k.B, k.Hk, k.s_kv, k.D, k.strides[1], off_k);
  const TensorPtr v = rows_tensor(*g, "v", kV, k.B, k.Hk, k.s_kv, k.D, k.strides[2], off_v);
  const TensorPtr len_q = k.plain ? TensorPtr() : int_tensor(*g, "len_q", kLenQ, k.B, fe::DataType_t::INT32);
  const TensorPtr len_kv = k.plain ? TensorPtr() : int_tensor(*g, "len_kv", kLenKv, k.B, fe::DataType_t::INT32);
  // Plain: equal lengths, so top-left and bottom-right alignment are the same causal mask.
  const auto alignment = k.plain ? fe::DiagonalAlignment_t::TOP_LEFT : fe::DiagonalAlignment_t::BOTTOM_RIGHT;
  const float scale = std::bit_cast<float>(k.scale_bits);
  if (!k.backward) {
    auto options =
        fe::graph::SDPA_attributes().set_name("lrsa_sdpa_fwd").set_generate_stats(true).set_attn_scale(scale);
    if (k.causal) options.set_diagonal_alignment(alignment).set_diagonal_band_right_bound(0);
    if (!k.plain) options.set_padding_mask(true).set_seq_len_q(len_q).set_seq_len_kv(len_kv);
    auto [o, stats] = g->sdpa(q, kt, v, options);
    as_rows(o, kO, k.B, k.Hq, k.s_q, k.D, k.strides[3], off_o);
    stats->set_output(true);
    stats_layout(stats, k, off_stats);
  } else {
    const TensorPtr off_do = off("off_do", kOffDO), off_dq = off("off_dq", kOffDQ), off_dk = off("off_dk", kOffDK),
                    off_dv = off("off_dv", kOffDV);
    const TensorPtr o = rows_tensor(*g, "o", kO, k.B, k.Hq, k.s_q, k.D, k.strides[3], off_o);
    const TensorPtr dout = rows_tensor(*g, "dout", kDO, k.B, k.Hq, k.s_q, k.D, k.strides[4], off_do);
    const TensorPtr stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats"));
    stats_layout(stats, k, off_stats);
    auto options = fe::graph::SDPA_backward_attributes().set_name("lrsa_sdpa_bwd").set_attn_scale(scale);
    if (k.causal) options.set_diagonal_alignment(alignment).set_diagonal_band_right_bound(0);
    if (!k.plain)
      options.set_padding_mask(true)
          .set_seq_len_q(len_q)
          .set_seq_len_kv(len_kv)
          .set_max_total_seq_len_q(k.t_q)
          .set_max_total_seq_len_kv(k.t_kv);
    auto [dq, dk, dv] = g->sdpa_backward(q, kt, v, o, dout, stats, options);
    as_rows(dq, kDQ, k.B, k.Hq, k.s_q, k.D, k.strides[5], off_dq);
    as_rows(dk, kDK, k.B, k.Hk, k.s_kv, k.D, k.strides[6], off_dk);
    as_rows(dv, kDV, k.B, k.Hk, k.s_kv, k.D, k.strides[7], off_dv);
  }
  check_fe(g->validate(), op, shape, "validate");
  check_fe(g->build_operation_graph(handle), op, shape, "build_operation_graph");
  check_fe(g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}), op, shape,
           "create_execution_plans");
  check_fe(g->check_support(), op, shape, "check_support");
  check_fe(g->build_plans(), op, shape, "build_plans");
  Built built{g, 0};
  check_fe(g->get_workspace_size(built.workspace), op, shape, "get_workspace_size");
  return built;
}

const Built& cached_graph(const GraphKey& key, cudnnHandle_t handle, const char* op, const std::string& shape) {
  // A training run sees a handful of shapes (batch sizes x the two directions; LRSA's passes at
  // long context: a few dozen per direction), and building a graph (cuDNN plan building on the host)
  // costs far more than running it: keep many.
  thread_local std::list<std::pair<GraphKey, Built>> cache;
  return recent(cache, 256, key, [&] { return build_graph(key, handle, op, shape); });
}

// ---------------------------------------------------------------------------------------------
// Argument checks

void check_rows(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t H, int64_t D, DType dtype,
                Device device) {
  LRSA_CHECK(t.defined() && t.dim() == 3 && t.size(0) == rows && t.size(1) == H && t.size(2) == D,
             "{}: {} must be [{}, {}, {}], got {}", op, name, rows, H, D, t.defined() ? t.describe() : "undefined");
  LRSA_CHECK(t.dtype() == dtype && t.device() == device, "{}: {} must be {} on {}, got {}", op, name,
             dtype_name(dtype), device.str(), t.describe());
  LRSA_CHECK(t.stride(2) == 1 && t.stride(1) == D && t.stride(0) >= H * D && t.stride(0) % 8 == 0 &&
                 aligned16(t.data()),
             "{}: {} needs contiguous heads (strides [>= {}, {}, 1]), a row stride that is a multiple of 8 and a "
             "16-byte aligned start, got {} with strides {}",
             op, name, H * D, D, t.describe(), shape_str(t.strides()));
}

void check_spans(const char* op, const VarlenSpans& s, Device device) {
  for (const auto& [name, t] : {std::pair{"cu_seqlens_q", &s.cu_seqlens_q},
                                std::pair{"cu_seqlens_kv", &s.cu_seqlens_kv}, std::pair{"q_starts", &s.q_starts}}) {
    if (t == &s.q_starts && !t->defined()) continue;  // optional
    LRSA_CHECK(t->defined() && t->dtype() == DType::I32 && t->dim() == 1 && t->size(0) == s.batch + 1 &&
                   t->device() == device,
               "{}: spans.{} must be i32 [batch + 1 = {}] on {}, got {}", op, name, s.batch + 1, device.str(),
               t->defined() ? t->describe() : "undefined");
  }
  LRSA_CHECK(s.batch >= 1 && s.max_seqlen_q >= 1 && s.max_seqlen_kv >= 1,
             "{}: spans need batch >= 1 and max_seqlen_q/kv >= 1, got batch {} max_seqlen_q {} max_seqlen_kv {}", op,
             s.batch, s.max_seqlen_q, s.max_seqlen_kv);
}

struct Problem {
  int64_t Tq, Tk, Hq, Hk, D;
};

Problem check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const VarlenSpans& spans) {
  LRSA_CHECK(q.defined() && q.dim() == 3 && k.defined() && k.dim() == 3, "{}: q and k must be [T, H, D], got {} and {}",
             op, q.defined() ? q.describe() : "undefined", k.defined() ? k.describe() : "undefined");
  const Problem p{q.size(0), k.size(0), q.size(1), k.size(1), q.size(2)};
  LRSA_CHECK(p.Hk >= 1 && p.Hq % p.Hk == 0, "{}: q heads ({}) must be a multiple of k/v heads ({})", op, p.Hq, p.Hk);
  LRSA_CHECK(q.device().type == DeviceType::CUDA && cudnn_attention_supported(p.D, q.dtype()),
             "{}: cuDNN attention takes bf16 CUDA tensors with head dim 64 or 128 on an sm_90+ device, got q {}", op,
             q.describe());
  check_rows(op, "q", q, p.Tq, p.Hq, p.D, DType::BF16, q.device());
  check_rows(op, "k", k, p.Tk, p.Hk, p.D, DType::BF16, q.device());
  check_rows(op, "v", v, p.Tk, p.Hk, p.D, DType::BF16, q.device());
  check_spans(op, spans, q.device());
  LRSA_CHECK(spans.max_seqlen_q <= p.Tq && spans.max_seqlen_kv <= p.Tk,
             "{}: spans.max_seqlen_q/kv = {}/{} exceed the rows of q/k ({}/{})", op, spans.max_seqlen_q,
             spans.max_seqlen_kv, p.Tq, p.Tk);
  LRSA_CHECK(p.Tq < (int64_t(1) << 31) && p.Tk < (int64_t(1) << 31), "{}: {} / {} rows exceed the i32 range", op, p.Tq,
             p.Tk);
  return p;
}

void check_lse(const char* op, const char* name, const Tensor& lse, const Problem& p, Device device) {
  LRSA_CHECK(lse.defined() && lse.dtype() == DType::F32 && lse.dim() == 2 && lse.size(0) == p.Hq &&
                 lse.size(1) == p.Tq && lse.is_contiguous() && lse.device() == device,
             "{}: {} must be contiguous f32 [Hq, Tq] = [{}, {}] on {}, got {}", op, name, p.Hq, p.Tq, device.str(),
             lse.defined() ? lse.describe() : "undefined");
}

// fmt is host-only here (nvcc cannot compile its compile-time format checks).
std::string shape_of(const Problem& p, const VarlenSpans& s) {
  std::string out = "Tq " + std::to_string(p.Tq);
  for (const auto& [name, value] : {std::pair{" Tk ", p.Tk}, {" Hq ", p.Hq}, {" Hk ", p.Hk}, {" D ", p.D},
                                    {" batch ", s.batch}, {" max_seqlen_q ", s.max_seqlen_q},
                                    {" max_seqlen_kv ", s.max_seqlen_kv}}) {
    out += name;
    out += std::to_string(value);
  }
  if (!s.causal) out += " not causal";
  if (s.q_starts.defined()) out += " query gaps";
  return out;
}

// One sequence over all rows of q and k (cu_seqlens = [0, T] on both sides).
bool is_plain(const Problem& p, const VarlenSpans& s) {
  return s.batch == 1 && !s.q_starts.defined() && p.Tq == p.Tk && s.max_seqlen_q == p.Tq && s.max_seqlen_kv == p.Tk;
}

GraphKey key_of(bool backward, const Problem& p, const VarlenSpans& s, float scale, std::array<int64_t, 8> strides,
                Device device) {
  if (is_plain(p, s))
    return GraphKey{backward, true, s.causal, device.index, p.Hq, p.Hk, p.D, 1, p.Tq, p.Tk, p.Tq, p.Tk,
                    std::bit_cast<uint32_t>(scale), strides};
  return GraphKey{backward,
                  false,
                  s.causal,
                  device.index,
                  p.Hq,
                  p.Hk,
                  p.D,
                  s.batch,
                  cudnn_graph_dim(s.max_seqlen_q),
                  cudnn_graph_dim(s.max_seqlen_kv),
                  cudnn_graph_dim(p.Tq),
                  cudnn_graph_dim(p.Tk),
                  std::bit_cast<uint32_t>(scale),
                  strides};
}

// First query row of each sequence, then the end of the last: cu_seqlens_q unless gaps.
const Tensor& query_starts(const VarlenSpans& s) { return s.q_starts.defined() ? s.q_starts : s.cu_seqlens_q; }

// Device buffers of one call: the ragged offsets of each tensor and the sequence lengths.
struct Ragged {
  Tensor offsets;  // i64 [n, B + 1]
  Tensor lengths;  // i32 [2, B]
  void* offset(int i, int64_t B) const { return offsets.data_as<int64_t>() + i * (B + 1); }
};

Ragged ragged(const VarlenSpans& s, std::initializer_list<std::pair<bool, int64_t>> tensors, Device device) {
  const int64_t B = s.batch;
  Ragged r;
  r.offsets = Tensor::empty({int64_t(tensors.size()), B + 1}, DType::I64, device);
  r.lengths = Tensor::empty({2, B}, DType::I32, device);
  OffsetArgs a{};
  for (const auto& [is_q, stride] : tensors) {
    a.cu[a.n] = (is_q ? query_starts(s) : s.cu_seqlens_kv).data_as<int32_t>();
    a.row_stride[a.n++] = stride;
  }
  a.offsets = r.offsets.data_as<int64_t>();
  a.cu_q = s.cu_seqlens_q.data_as<int32_t>();
  a.cu_kv = s.cu_seqlens_kv.data_as<int32_t>();
  a.len_q = r.lengths.data_as<int32_t>();
  a.len_kv = a.len_q + B;
  a.B = int(B);
  ragged_offsets_kernel<<<grid_size(B + 1, 128), 128, 0, current_stream()>>>(a);
  LRSA_CUDA_CHECK_LAUNCH("cudnn attention: ragged offsets");
  return r;
}

void execute(const Built& built, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pack, Device device,
             const char* op, const std::string& shape) {
  Tensor workspace;
  if (built.workspace > 0) workspace = Tensor::empty({built.workspace}, DType::U8, device);
  check_fe(built.graph->execute(handle, pack, workspace.defined() ? workspace.data() : nullptr), op, shape, "execute");
}

// The checks both directions share (q, k, v, out, lse, spans); makes q's device current.
Problem check_call(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse, const VarlenSpans& spans) {
  LRSA_CHECK(q.defined(), "{}: q is undefined", op);
  LRSA_CUDA_CHECK(cudaSetDevice(q.device().index));
  const Problem p = check_qkv(op, q, k, v, spans);
  check_rows(op, "out", out, p.Tq, p.Hq, p.D, DType::BF16, q.device());
  check_lse(op, "lse", lse, p, q.device());
  return p;
}

}  // namespace

int64_t cudnn_graph_dim(int64_t n) {
  const uint64_t v = uint64_t(std::max<int64_t>(n, 1)), step = std::max<uint64_t>(std::bit_floor(v) / 8, 1);
  return int64_t((v + step - 1) / step * step);
}

int64_t cudnn_backward_workspace_estimate(int64_t batch, int64_t max_seqlen_kv, int64_t total_q, int64_t q_heads,
                                          int64_t head_dim) {
  return (batch * cudnn_graph_dim(max_seqlen_kv) + cudnn_graph_dim(total_q)) * q_heads * head_dim * 4;
}

bool cudnn_attention_supported(int64_t head_dim, DType dtype) {
  if (dtype != DType::BF16 || (head_dim != 64 && head_dim != 128)) return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();  // no device: clear the error so that later launches do not report it
    return false;
  }
  return major >= 9;
}

void cudnn_varlen_forward(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenSpans& spans, float scale,
                          Tensor& out, Tensor& lse) {
  const char* op = "cudnn_varlen_forward";
  const Problem p = check_call(op, q, k, v, out, lse, spans);
  const Device device = q.device();
  const std::string shape = shape_of(p, spans);
  const cudnnHandle_t handle = handle_for(device.index, op);
  const GraphKey key = key_of(false, p, spans, scale, {q.stride(0), k.stride(0), v.stride(0), out.stride(0), 0, 0, 0, 0},
                              device);
  const Built& built = cached_graph(key, handle, op, shape);
  if (key.plain) {
    std::unordered_map<int64_t, void*> pack = {
        {kQ, q.data()}, {kK, k.data()}, {kV, v.data()}, {kO, out.data()}, {kStats, lse.data()}};
    execute(built, handle, pack, device, op, shape);
    return;
  }

  const Ragged r = ragged(spans, {{true, q.stride(0)}, {false, k.stride(0)}, {false, v.stride(0)},
                                  {true, out.stride(0)}, {true, p.Hq}},
                          device);
  Tensor stats = Tensor::empty({p.Tq, p.Hq}, DType::F32, device);
  // cuDNN writes no stats for rows in gaps: they reach lse as the -inf filled in here.
  if (spans.q_starts.defined()) stats.fill_(-INFINITY);
  const int64_t B = spans.batch;
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.data()},           {kK, k.data()},           {kV, v.data()},
      {kO, out.data()},         {kStats, stats.data()},   {kLenQ, r.lengths.data()},
      {kLenKv, r.lengths.data_as<int32_t>() + B},
      {kOffQ, r.offset(0, B)},  {kOffK, r.offset(1, B)},  {kOffV, r.offset(2, B)},
      {kOffO, r.offset(3, B)},  {kOffStats, r.offset(4, B)},
  };
  execute(built, handle, pack, device, op, shape);
  move_stats(stats.data_as<float>(), lse.data_as<float>(), query_starts(spans), B, p.Tq, p.Hq, true);
}

void cudnn_varlen_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                           const Tensor& dout, const VarlenSpans& spans, float scale, Tensor& dq, Tensor& dk,
                           Tensor& dv) {
  const char* op = "cudnn_varlen_backward";
  const Problem p = check_call(op, q, k, v, out, lse, spans);
  const Device device = q.device();
  check_rows(op, "dout", dout, p.Tq, p.Hq, p.D, DType::BF16, device);
  check_rows(op, "dq", dq, p.Tq, p.Hq, p.D, DType::BF16, device);
  check_rows(op, "dk", dk, p.Tk, p.Hk, p.D, DType::BF16, device);
  check_rows(op, "dv", dv, p.Tk, p.Hk, p.D, DType::BF16, device);
  const std::string shape = shape_of(p, spans);
  const cudnnHandle_t handle = handle_for(device.index, op);
  const GraphKey key = key_of(true, p, spans, scale,
                              {q.stride(0), k.stride(0), v.stride(0), out.stride(0), dout.stride(0), dq.stride(0),
                               dk.stride(0), dv.stride(0)},
                              device);
  // Seen in training: ragged graphs gave NaN dQ with q and dq rows apart by different strides.
  LRSA_CHECK(key.plain || dq.stride(0) == q.stride(0),
             "{}: dq must have q's row stride ({} elements) for packed sequences, got {}", op, q.stride(0),
             dq.stride(0));
  const Built& built = cached_graph(key, handle, op, shape);
  if (key.plain) {
    std::unordered_map<int64_t, void*> pack = {
        {kQ, q.data()},   {kK, k.data()},   {kV, v.data()},   {kO, out.data()}, {kStats, lse.data()},
        {kDO, dout.data()}, {kDQ, dq.data()}, {kDK, dk.data()}, {kDV, dv.data()}};
    execute(built, handle, pack, device, op, shape);
    return;
  }

  const int64_t B = spans.batch;
  const Ragged r = ragged(spans,
                          {{true, q.stride(0)}, {false, k.stride(0)}, {false, v.stride(0)}, {true, out.stride(0)},
                           {true, p.Hq}, {true, dout.stride(0)}, {true, dq.stride(0)}, {false, dk.stride(0)},
                           {false, dv.stride(0)}},
                          device);
  Tensor stats = Tensor::empty({p.Tq, p.Hq}, DType::F32, device);
  move_stats(stats.data_as<float>(), lse.data_as<float>(), query_starts(spans), B, p.Tq, p.Hq, false);
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.data()},          {kK, k.data()},           {kV, v.data()},
      {kO, out.data()},        {kStats, stats.data()},   {kDO, dout.data()},
      {kDQ, dq.data()},        {kDK, dk.data()},         {kDV, dv.data()},
      {kLenQ, r.lengths.data()}, {kLenKv, r.lengths.data_as<int32_t>() + B},
      {kOffQ, r.offset(0, B)}, {kOffK, r.offset(1, B)},  {kOffV, r.offset(2, B)},
      {kOffO, r.offset(3, B)}, {kOffStats, r.offset(4, B)}, {kOffDO, r.offset(5, B)},
      {kOffDQ, r.offset(6, B)}, {kOffDK, r.offset(7, B)}, {kOffDV, r.offset(8, B)},
  };
  execute(built, handle, pack, device, op, shape);
}

}  // namespace lrsa::cuda
