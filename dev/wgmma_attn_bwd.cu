// dev/wgmma_attn_bwd.cu: checks and times kernels/attn_wgmma_backward.cuh (the attention backward on
// wgmma + TMA, head dim 64 or 128, dense causal and LRSA over packed documents; dev/README.md). First the
// plan on the CPU: every query sees each of its keys once through the work units and masks, against
// the spec's visibility.
// Then, on an sm_90 GPU, checks dQ, dK and dV against a reference in double (dense and LRSA shapes,
// packed documents, d64 and d128, every way of adding dQ), then times T = 16K, 32K (also as 4
// documents) and 128K (14:2 x d64 heads, or 28:4 x d128 with --d128), dense and LRSA, each way of
// adding dQ.
//
//   build-gpu/dev-wgmma_attn_bwd [--check | --d128 | --units | --lrsa]   (or: bash dev/run.sh wgmma_attn_bwd)
#include <future>

#include "../kernels/attn_wgmma_backward.cuh"
#include "attention_problem.h"
#include "hopper.cuh"

using namespace lrsa::cuda::wgmma::bwd;

// The gradients in double from the definition, given O and dO: dS = P (dP - D), D = rowsum(P dP).
// Alongside, the straightforward way at bf16 (as PyTorch's autograd runs the bf16 forward: dP, dS and
// the scaled dS rounded to bf16, GEMMs with fp32 sums rounded to bf16, each head's dK and dV rounded
// before the GQA group's sum).
struct Gradients {
  std::vector<double> dq, dk, dv;
  std::vector<float> dq_simple, dk_simple, dv_simple;
};

Gradients reference_backward(const Problem& p, const Reference& fwd, const std::vector<__nv_bfloat16>& d_o) {
  const int T = p.T, Hq = p.Hq, Hk = p.Hk, group = Hq / Hk, D = p.D;
  const double scale = 1.0 / std::sqrt(double(D));
  auto at = [D](const std::vector<__nv_bfloat16>& x, int row, int heads, int head, int d) {
    return double(__bfloat162float(x[(size_t(row) * heads + head) * D + d]));
  };
  Gradients g{std::vector<double>(p.q.size()), std::vector<double>(p.k.size()), std::vector<double>(p.k.size()),
              std::vector<float>(p.q.size()), std::vector<float>(p.k.size()), std::vector<float>(p.k.size())};
  std::vector<double> prob(T), dprob(T);
  std::vector<float> prob16(T), dprob16(T), dq16(D);
  std::vector<float> dk_heads(size_t(T) * Hq * D), dv_heads(size_t(T) * Hq * D);  // per query head, fp32 sums
  for (int h = 0; h < Hq; ++h) {
    const int kh = h / group;
    for (int i = 0; i < T; ++i) {
      double d_row = 0;
      for (int j = 0; j <= i; ++j) {
        prob[j] = dprob[j] = 0;
        if (!p.visible(kh, i, j)) continue;
        double dot = 0, ddot = 0;
        for (int d = 0; d < D; ++d) {
          dot += at(p.q, i, Hq, h, d) * at(p.k, j, Hk, kh, d);
          ddot += at(d_o, i, Hq, h, d) * at(p.v, j, Hk, kh, d);
        }
        prob[j] = std::exp(dot * scale - fwd.lse[size_t(h) * T + i]);
        dprob[j] = ddot;
        d_row += prob[j] * ddot;
      }
      for (int j = 0; j <= i; ++j) {
        if (prob[j] == 0) continue;
        const double ds = prob[j] * (dprob[j] - d_row) * scale;
        for (int d = 0; d < D; ++d) {
          g.dq[(size_t(i) * Hq + h) * D + d] += ds * at(p.k, j, Hk, kh, d);
          g.dk[(size_t(j) * Hk + kh) * D + d] += ds * at(p.q, i, Hq, h, d);
          g.dv[(size_t(j) * Hk + kh) * D + d] += prob[j] * at(d_o, i, Hq, h, d);
        }
      }

      simple_probabilities(p, h, i, prob16);
      float d_row16 = 0.0f;
      for (int j = 0; j <= i; ++j) {
        dprob16[j] = prob16[j] == 0.0f ? 0.0f
                                       : bf16_round(dot_f32(&d_o[(size_t(i) * Hq + h) * D],
                                                            &p.v[(size_t(j) * Hk + kh) * D], D));
        d_row16 += prob16[j] * dprob16[j];
      }
      std::fill(dq16.begin(), dq16.end(), 0.0f);
      for (int j = 0; j <= i; ++j) {
        if (prob16[j] == 0.0f) continue;
        const float ds = bf16_round(bf16_round(prob16[j] * (dprob16[j] - d_row16)) * float(scale));
        for (int d = 0; d < D; ++d) {
          dq16[d] += ds * float(at(p.k, j, Hk, kh, d));
          dk_heads[(size_t(j) * Hq + h) * D + d] += ds * float(at(p.q, i, Hq, h, d));
          dv_heads[(size_t(j) * Hq + h) * D + d] += prob16[j] * float(at(d_o, i, Hq, h, d));
        }
      }
      for (int d = 0; d < D; ++d) g.dq_simple[(size_t(i) * Hq + h) * D + d] = bf16_round(dq16[d]);
    }
  }
  for (int j = 0; j < T; ++j)
    for (int h = 0; h < Hq; ++h)
      for (int d = 0; d < D; ++d) {
        const size_t to = (size_t(j) * Hk + h / group) * D + d, from = (size_t(j) * Hq + h) * D + d;
        g.dk_simple[to] += bf16_round(dk_heads[from]);
        g.dv_simple[to] += bf16_round(dv_heads[from]);
      }
  for (float& x : g.dk_simple) x = bf16_round(x);
  for (float& x : g.dv_simple) x = bf16_round(x);
  return g;
}

// Queries per step of the kernel at the problem's head dim.
int step_rows(const Problem& p) { return p.D == 64 ? Shape<64>::kStepRows : Shape<128>::kStepRows; }

// The padded rows (dQ's rounding walks them): padded_sources inverts padded_rows_of, and the rows it
// leaves at -1 are the pads.
bool padding_check(const Problem& p) {
  const std::vector<int> padded = padded_rows_of(p.doc_start, p.lrsa());
  const std::vector<int> row_of = padded_sources(padded, padded_begins(p.doc_start, p.lrsa()).back());
  const int pads = int(std::count(row_of.begin(), row_of.end(), -1));
  bool ok = row_of.size() % 16 == 0 && pads == int(row_of.size()) - p.T;
  for (int t = 0; t < p.T; ++t) ok = ok && row_of[size_t(padded[size_t(t)])] == t;
  if (!ok)
    std::printf("padded rows of T=%d (%d docs): padded_sources does not invert padded_rows_of\n", p.T,
                p.documents());
  return ok;
}

// The units' order on `sms` SMs: a tail of the shortest units, at least two waves of CTAs (or every
// unit) and no more lengths than that takes, the longest first; before it, the units block by block
// (a document's query tiles over its unit length), the longest first within a block. The CTAs take
// each unit once per KV head: head by head before the tail, every head in turn through it.
bool order_check(const Problem& p, const WorkUnits& plan, std::optional<int> unit_query_tiles, int sms) {
  const std::vector<WorkUnit>& units = plan.units;
  const int n = int(units.size()), group = p.Hq / p.Hk;
  auto block = [&](const WorkUnit& u) {
    return std::pair{u.padded_begin,
                     u.m_begin / unit_query_tiles.value_or(lrsa::cuda::wgmma::bwd::unit_query_tiles(u.length, group))};
  };
  // The last two waves' units (or all) are the tail's shortest: the tail is every unit no longer than
  // the first of them.
  const int tail_units = std::min(n, (2 * sms + p.Hk - 1) / p.Hk);
  const int longest = tail_units ? units[size_t(n - tail_units)].m_count : 0;
  int tail = n;
  while (tail > 0 && units[size_t(tail - 1)].m_count <= longest) --tail;
  bool ok = plan.order.head_major == tail;
  for (int i = 0; i < n; ++i)
    ok = ok && (i < tail ? units[size_t(i)].m_count > longest : i == tail || units[i].m_count <= units[i - 1].m_count);
  for (int i = 1; i < tail; ++i)
    ok = ok && (block(units[i - 1]) < block(units[i]) ||
                (block(units[i - 1]) == block(units[i]) && units[i - 1].m_count >= units[i].m_count));
  std::vector<int> taken(size_t(n) * p.Hk, 0);
  for (int cta = 0; cta < n * p.Hk; ++cta) {
    const int2 at = plan.order.unit_and_head(cta, p.Hk);
    const int2 expected = cta < tail * p.Hk ? int2{cta % tail, cta / tail}
                                            : int2{tail + (cta - tail * p.Hk) / p.Hk, (cta - tail * p.Hk) % p.Hk};
    ok = ok && at.x == expected.x && at.y == expected.y && ++taken[size_t(at.x) * p.Hk + at.y] == 1;
  }
  if (!ok)
    std::printf("backward plan of T=%d (%d docs) on %d SMs: %d units, a tail of %d: not in block, tail or head order\n",
                p.T, p.documents(), sms, n, n - tail);
  return ok;
}

// The plan on the CPU: the work units' steps (of step_rows queries), through the kernel's masks (none
// on whole steps), let every query see each of its keys once (PairCounts), and a tile's rows outside
// its document (before it: the tile grid's shift) or its compacted rows reach no query and see no key;
// and the units run in order_check's order, on an H200's 132 SMs and on 4.
bool plan_check(const Problem& p, std::optional<int> unit_query_tiles) {
  const Lrsa lrsa = p.lrsa();
  const int rows_per_step = step_rows(p);
  const auto plan_on = [&](int sms) {
    return work_units(p.doc_start, p.compacted_start, lrsa, p.Hq / p.Hk, p.Hk, sms, unit_query_tiles);
  };
  const WorkUnits plan = plan_on(132);
  if (!order_check(p, plan_on(4), unit_query_tiles, 4) || !order_check(p, plan, unit_query_tiles, 132)) return false;
  const std::vector<WorkUnit>& units = plan.units;
  for (int kv_head = 0; kv_head < p.Hk; ++kv_head) {
    PairCounts counts(p, kv_head);
    for (const WorkUnit& unit : units) {
      const int T = unit.length;
      const KeyTile tile(lrsa, unit.tile, T);
      const int2 whole_steps = tile.whole_steps(lrsa, T);
      const int rows = tile.compacted ? unit.compacted_rows : T;
      for (int row = unit.m_begin * kBlock; row < (unit.m_begin + unit.m_count) * kBlock; row += rows_per_step) {
        const int query_begin = row - lrsa.shift;
        const bool whole = whole_step(whole_steps, query_begin, rows_per_step);
        for (int key = tile.key_begin; key < tile.key_begin + kBlock; ++key) {
          const int2 seen = tile.viewers(lrsa, key, T);
          for (int query = query_begin; query < query_begin + rows_per_step; ++query) {
            if (!whole && (query < seen.x || query >= seen.y)) continue;
            if (query < 0 || query >= T || key < 0 || key >= rows)
              counts.visit(-1, -1);  // outside the document: no query may see it
            else if (tile.compacted)
              counts.visit_compacted(unit.begin + query, unit.compacted_begin + key);
            else
              counts.visit(unit.begin + query, unit.begin + key);
          }
        }
      }
    }
    if (!counts.exact("backward plan")) return false;
  }
  return true;
}

struct BackwardRun {
  std::vector<__nv_bfloat16> dq, dk, dv;
  float ms = 0, kernel_ms = 0;
  std::vector<CtaSpan> spans;  // of one more run of the kernel, when timed
};

// O (bf16) and lse come from the reference forward, so only the backward is under test.
template <int kHeadDim, DqMode kDq>
BackwardRun run_backward(const Problem& p, const Reference& fwd, const std::vector<__nv_bfloat16>& d_o_host,
                         int repeats, std::optional<int> unit_query_tiles) {
  const int T = p.T, Hq = p.Hq, Hk = p.Hk;
  const int compacted_rows = p.lag ? p.compacted_rows() : 0;
  const std::vector<int> padded_row_host = padded_rows_of(p.doc_start, p.lrsa());
  const int padded_rows = padded_begins(p.doc_start, p.lrsa()).back();
  std::vector<__nv_bfloat16> o_host(fwd.o.size());
  for (size_t i = 0; i < o_host.size(); ++i) o_host[i] = __float2bfloat16(float(fwd.o[i]));
  const std::vector<float> saved_lse_host(fwd.lse.begin(), fwd.lse.end());  // [Hq, T], as the forward saves it
  std::vector<int> compacted_row_host(size_t(Hk) * T, -1);
  for (int h = 0; h < Hk && p.lag; ++h)
    std::copy(p.compacted_row[h].begin(), p.compacted_row[h].end(), compacted_row_host.begin() + size_t(h) * T);
  __nv_bfloat16 *q = upload(p.q), *k = upload(p.k), *v = upload(p.v), *o = upload(o_host), *d_o = upload(d_o_host);
  __nv_bfloat16 *ck = p.lag ? upload(p.ck) : k, *cv = p.lag ? upload(p.cv) : v;
  __nv_bfloat16 *dq, *dk, *dv;
  float* saved_lse = upload(saved_lse_host);
  int* compacted_row = upload(compacted_row_host);
  int* padded_source = upload(padded_sources(padded_row_host, padded_rows));
  CHECK_CUDA(cudaMalloc(&dq, p.q.size() * 2));
  CHECK_CUDA(cudaMalloc(&dk, p.k.size() * 2));
  CHECK_CUDA(cudaMalloc(&dv, p.k.size() * 2));
  // As attn_wgmma.cu's backward_at (BackwardSums), which the D pass fills and zeroes.
  const BackwardSums layout(Hq, padded_rows, T, Hk, compacted_rows, kHeadDim);
  float* sums;
  CHECK_CUDA(cudaMalloc(&sums, size_t(layout.floats()) * 4));
  const BackwardSums::Parts part = layout.parts(sums);
  const lrsa::cuda::DeltaExtras extras = layout.delta_extras(sums, saved_lse);
  constexpr int kStepRows = Shape<kHeadDim>::kStepRows;
  const CUtensorMap q_map = tensor_map(q, T, Hq, kStepRows, kHeadDim);
  const CUtensorMap do_map = tensor_map(d_o, T, Hq, kStepRows, kHeadDim);
  const CUtensorMap k_map = tensor_map(k, T, Hk, kBlock, kHeadDim), v_map = tensor_map(v, T, Hk, kBlock, kHeadDim);
  const int compacted_map_rows = p.lag ? std::max(compacted_rows, 1) : T;
  const CUtensorMap ck_map = tensor_map(ck, compacted_map_rows, Hk, kBlock, kHeadDim),
                    cv_map = tensor_map(cv, compacted_map_rows, Hk, kBlock, kHeadDim);
  constexpr int kSmemBytes = Smem<kHeadDim, kDq>::kBytes;
  auto kernel = attn_bwd_kernel<kHeadDim, kDq>;
  CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  const Lrsa lrsa = p.lrsa();
  int device = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  // Checked (untimed) runs plan for 4 SMs: on 132, a small problem's units would all be the tail's, and
  // the CTAs before the tail would go unchecked.
  const WorkUnits plan =
      work_units(p.doc_start, p.compacted_start, lrsa, p.Hq / p.Hk, Hk, repeats > 0 ? sms : 4, unit_query_tiles);
  WorkUnit* units = upload(plan.units);
  const unsigned grid = unsigned(plan.units.size()) * Hk;  // a CTA per unit and KV head
  auto backward_kernel = [&](CtaSpan* spans = nullptr) {
    kernel<<<grid, kThreads<kDq>, kSmemBytes>>>(q_map, k_map, v_map, ck_map, cv_map, do_map, lrsa, units, plan.order,
                                                part.lse, part.d, padded_rows, part.dq, part.dk, part.dv, part.dkc,
                                                part.dvc, Hq, Hk, scale, spans);
  };
  auto backward = [&] {
    const int64_t q_stride = int64_t(Hq) * kHeadDim, k_stride = int64_t(Hk) * kHeadDim;
    lrsa::cuda::delta_kernel<<<lrsa::cuda::delta_blocks<__nv_bfloat16>(padded_rows, Hq, kHeadDim), 256>>>(
        o, q_stride, d_o, q_stride, padded_source, T, Hq, kHeadDim, padded_rows, true, part.d, extras);
    backward_kernel();
    round_dq_kernel<kHeadDim><<<dim3(128, Hq), 256>>>(part.dq, padded_source, scale, dq, q_stride, padded_rows);
    finalize_kv_kernel<kHeadDim><<<dim3(512, Hk), 256>>>(part.dk, part.dv, part.dkc, part.dvc, compacted_row, dk,
                                                         k_stride, dv, k_stride, T, Hk);
  };
  backward();
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  BackwardRun out;
  out.dq.resize(p.q.size());
  out.dk.resize(p.k.size());
  out.dv.resize(p.k.size());
  CHECK_CUDA(cudaMemcpy(out.dq.data(), dq, out.dq.size() * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.dk.data(), dk, out.dk.size() * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.dv.data(), dv, out.dv.size() * 2, cudaMemcpyDeviceToHost));
  if (repeats > 0) {
    out.ms = time_ms(backward, repeats);
    out.kernel_ms = time_ms([&] { backward_kernel(); }, repeats);
    out.spans = record_spans(backward_kernel, grid);
  }
  for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)o, (void*)d_o, (void*)dq, (void*)dk, (void*)dv,
                    (void*)sums, (void*)saved_lse, (void*)compacted_row, (void*)padded_source, (void*)units})
    CHECK_CUDA(cudaFree(ptr));
  if (p.lag) {
    CHECK_CUDA(cudaFree(ck));
    CHECK_CUDA(cudaFree(cv));
  }
  return out;
}

// The ways of adding dQ, each as run_backward runs it; training's is kTrainingDq (training_way).
struct DqWay {
  DqMode mode;
  const char* name;
  BackwardRun (*run)(const Problem&, const Reference&, const std::vector<__nv_bfloat16>&, int, std::optional<int>);
};
// run_backward at the problem's head dim.
template <DqMode kDq>
BackwardRun run_at_head_dim(const Problem& p, const Reference& fwd, const std::vector<__nv_bfloat16>& d_o, int repeats,
                            std::optional<int> unit_query_tiles = std::nullopt) {
  return p.D == 64 ? run_backward<64, kDq>(p, fwd, d_o, repeats, unit_query_tiles)
                   : run_backward<128, kDq>(p, fwd, d_o, repeats, unit_query_tiles);
}
const DqWay kDqWays[] = {
    {DqMode::kVectorReduce, "red.v4", run_at_head_dim<DqMode::kVectorReduce>},
    {DqMode::kSplitReduce, "red.v4 split", run_at_head_dim<DqMode::kSplitReduce>},
    {DqMode::kAtomic, "atomic", run_at_head_dim<DqMode::kAtomic>},
    {DqMode::kBulk, "bulk", run_at_head_dim<DqMode::kBulk>},
    {DqMode::kWriter, "writer warp", run_at_head_dim<DqMode::kWriter>},
    {DqMode::kSkip, "skipped (a bound, wrong dQ)", run_at_head_dim<DqMode::kSkip>},
};
const DqWay& training_way(int head_dim) {
  const DqMode mode = head_dim == 128 ? kTrainingDq<128> : kTrainingDq<64>;
  return *std::find_if(std::begin(kDqWays), std::end(kDqWays), [&](const DqWay& way) { return way.mode == mode; });
}

// One gradient by FlashAttention's tolerance rule (RuleCheck).
bool check_gradient(const char* name, const std::vector<__nv_bfloat16>& got, const std::vector<double>& want,
                    const std::vector<float>& simple) {
  const RuleCheck c = rule_check(got, want, simple);
  std::printf(" %s %.3g (straightforward bf16 %.3g) of %.3g", name, c.error, c.simple, c.largest);
  return c.within(1e-5 * c.largest);
}

std::vector<__nv_bfloat16> random_like(const std::vector<__nv_bfloat16>& x, uint32_t seed) {
  std::vector<__nv_bfloat16> y(x.size());
  for (auto& e : y) {
    seed = seed * 1664525u + 1013904223u;
    e = __float2bfloat16(float(seed >> 8) / float(1 << 24) * 2.0f - 1.0f);
  }
  return y;
}

// dense_ms > 0: also the LRSA time's ratio to it.
void report(const Problem& p, const char* name, const BackwardRun& r, double dense_ms) {
  const double flops = 10.0 * visible_pairs(p) * p.D * p.Hq;  // 5 GEMMs
  std::printf("time dQ %-32s T=%6d (%d docs) %d:%d d%d %-24s backward %7.3f ms (%5.1f TFLOP/s on the visible pairs) "
              "with D, dQ's zeroing and rounding, dK/dV's sums; the kernel alone %7.3f ms (%5.1f)",
              name, p.T, p.documents(), p.Hq, p.Hk, p.D, p.lag ? "LRSA S=16 L=1024 K=256:" : "dense causal:", r.ms,
              flops / (r.ms * 1e-3) / 1e12,
              r.kernel_ms, flops / (r.kernel_ms * 1e-3) / 1e12);
  if (p.lag && dense_ms > 0)
    std::printf(", %.3f of dense with red.v4\n", r.ms / dense_ms);
  else
    std::printf("\n");
  span_report(name, r.spans);
}

// A timing problem: T tokens as `documents` equal ones, dense or LRSA (S=16, L=1024, K=256), with a
// plausible forward (lse = log of the visible keys, so P stays near 1 / keys).
struct TimingProblem {
  Problem p;
  Reference fwd;
  std::vector<__nv_bfloat16> d_o;
};
TimingProblem timing_problem(int T, int documents, int Hq, int Hk, bool lrsa, int head_dim = 64) {
  const std::vector<int> lengths(documents, T / documents);
  TimingProblem t{lrsa ? make_problem(lengths, Hq, Hk, 99, 16, 1024, 256, head_dim)
                       : make_problem(lengths, Hq, Hk, 99, 0, 0, 0, head_dim),
                  {}, {}};
  const Problem& p = t.p;
  t.fwd = {std::vector<double>(p.q.size(), 0.01), std::vector<double>(size_t(p.Hq) * T), {}, {}};
  for (int h = 0; h < p.Hq; ++h)
    for (int i = 0; i < T; ++i) t.fwd.lse[size_t(h) * T + i] = std::log(double(i - p.doc_start[p.doc_of[i]] + 1));
  t.d_o = random_like(p.q, 3);
  return t;
}

// `--units`: the backward (red.v4) with units by unit_query_tiles() and of each size it picks from,
// for Qwen2.5-0.5B's heads (14:2) and Llama-3.2-1B's (32:8) over 1 to 16 documents.
void unit_study() {
  struct Case {
    int T, documents;
    bool lrsa;
  };
  for (auto [Hq, Hk] : {std::pair{14, 2}, {32, 8}})
    for (const Case c : {Case{16384, 1, true}, {32768, 1, true}, {131072, 1, true}, {32768, 2, true},
                         {32768, 4, true}, {32768, 8, true}, {32768, 16, true}, {16384, 4, true}, {65536, 4, true},
                         {16384, 1, false}, {32768, 4, false}, {32768, 8, false}}) {
      const TimingProblem t = timing_problem(c.T, c.documents, Hq, Hk, c.lrsa);
      const int repeats = c.T > 32768 ? 3 : 10;
      char name[64];
      std::snprintf(name, sizeof name, "units by the rule: %d", unit_query_tiles(c.T / c.documents, Hq / Hk));
      report(t.p, name, run_at_head_dim<DqMode::kVectorReduce>(t.p, t.fwd, t.d_o, repeats), 0);
      for (int unit : {12, 24, 48}) {
        std::snprintf(name, sizeof name, "units of %d", unit);
        report(t.p, name, run_at_head_dim<DqMode::kVectorReduce>(t.p, t.fwd, t.d_o, repeats, unit), 0);
      }
    }
}

// --lrsa: training's way alone on LRSA at both head dims, for A/Bs of a kernel change in a minute
// rather than the full tables' four.
void lrsa_study() {
  for (int head_dim : {64, 128})
    for (auto [T, documents] : {std::pair{16384, 1}, {32768, 1}, {32768, 4}, {131072, 1}}) {
      const TimingProblem t = head_dim == 128 ? timing_problem(T, documents, 28, 4, true, 128)
                                              : timing_problem(T, documents, 14, 2, true);
      const DqWay& way = training_way(head_dim);
      report(t.p, way.name, way.run(t.p, t.fwd, t.d_o, T > 32768 ? 3 : 10, std::nullopt), 0);
    }
}

int main(int argc, char** argv) {
  const std::string flag = harness_flag(argc, argv, "wgmma_attn_bwd", {"--units", "--d128", "--lrsa"});
  struct CheckShape {
    std::vector<int> lengths;  // of the packed documents
    int Hq, Hk, sink, lag, keep;
  };
  // Dense, then LRSA: partition boundaries off the tiles, S = 0, a short L, T < S + 2L, GQA 1..4, and
  // packed documents (lengths off the tiles, one shorter than the sinks); each at d64 and d128 but the
  // last (the largest, whose unit lengths the rule picks two ways).
  std::vector<Problem> problems;
  for (const CheckShape& shape :
       {CheckShape{{256}, 2, 1, 0, 0, 0}, CheckShape{{1000}, 4, 2, 0, 0, 0}, CheckShape{{1024}, 4, 2, 0, 0, 0},
        CheckShape{{700}, 4, 1, 0, 0, 0}, CheckShape{{300, 1000, 77, 700}, 4, 2, 0, 0, 0},
        CheckShape{{1000}, 4, 2, 16, 128, 32}, CheckShape{{1500}, 2, 1, 5, 200, 50},
        CheckShape{{700}, 4, 1, 0, 100, 25},
        CheckShape{{300}, 2, 2, 16, 160, 40}, CheckShape{{2600}, 2, 1, 300, 256, 64},
        CheckShape{{1000, 10, 500, 1300}, 4, 2, 16, 128, 32}, CheckShape{{700, 2600}, 2, 1, 300, 256, 64},
        CheckShape{{3300, 900}, 8, 1, 16, 512, 128}})
    for (int head_dim : {64, 128})
      if (head_dim == 64 || shape.lengths[0] != 3300)
        problems.push_back(make_problem(shape.lengths, shape.Hq, shape.Hk, 11 + shape.lengths[0], shape.sink,
                                        shape.lag, shape.keep, head_dim));
  bool ok = true;  // the plans first: on the CPU, so they are checked without a GPU too
  for (const Problem& p : problems) {
    ok = padding_check(p) && ok;
    for (std::optional<int> unit_query_tiles : {std::optional<int>(), {1}, {12}, {24}, {48}})
      ok = plan_check(p, unit_query_tiles) && ok;
  }
  std::printf("wgmma_attn_bwd: padded rows, and plans of units by the rule and of 1, 12, 24 and 48 query tiles over "
              "%zu problems: %s\n",
              problems.size(), ok ? "PASS" : "FAIL");
  if (!ok) return 1;
  require_hopper("wgmma_attn_bwd");
  // The references in double, a thread per problem (they take most of the checks' time).
  struct Expected {
    Reference fwd;
    std::vector<__nv_bfloat16> d_o;
    Gradients want;
  };
  std::vector<std::future<Expected>> expected;
  for (const Problem& p : problems)
    expected.push_back(std::async(std::launch::async, [&p] {
      Expected e{reference(p), random_like(p.q, 5 + p.length(0)), {}};
      e.want = reference_backward(p, e.fwd, e.d_o);
      return e;
    }));
  for (size_t i = 0; i < problems.size(); ++i) {
    const Problem& p = problems[i];
    const auto [fwd, d_o, want] = expected[i].get();
    for (const DqWay& way : kDqWays) {
      if (way.mode == DqMode::kSkip) continue;
      const BackwardRun got = way.run(p, fwd, d_o, 0, std::nullopt);
      std::printf("check dQ %-6s T=%4d (%d docs) %d:%d d%d S=%d L=%d K=%d:", way.name, p.T, p.documents(), p.Hq,
                  p.Hk, p.D, p.sink, p.lag, p.keep);
      bool shape_ok = check_gradient("dQ", got.dq, want.dq, want.dq_simple);
      shape_ok = check_gradient("dK", got.dk, want.dk, want.dk_simple) && shape_ok;
      shape_ok = check_gradient("dV", got.dv, want.dv, want.dv_simple) && shape_ok;
      std::printf(": %s\n", shape_ok ? "PASS" : "FAIL");
      ok = ok && shape_ok;
    }
  }
  if (!ok) return 1;  // no timing of a wrong kernel
  if (flag == "--check") return 0;
  if (flag == "--units") {
    unit_study();
    return 0;
  }
  if (flag == "--lrsa") {
    lrsa_study();
    return 0;
  }
  // One document of T tokens, or T tokens packed as `documents` equal ones; Qwen2.5-0.5B's heads
  // (14:2 x d64), or with --d128 the 28:4 x d128 of Qwen2.5-7B.
  const bool d128 = flag == "--d128";
  for (auto [T, documents] : {std::pair{16384, 1}, {32768, 1}, {32768, 4}, {131072, 1}}) {
    double dense_ms = 0;
    for (bool lrsa : {false, true}) {
      const TimingProblem t =
          d128 ? timing_problem(T, documents, 28, 4, lrsa, 128) : timing_problem(T, documents, 14, 2, lrsa);
      const int repeats = T > 32768 ? 3 : 10;
      for (const DqWay& way : kDqWays) {
        const BackwardRun r = way.run(t.p, t.fwd, t.d_o, repeats, std::nullopt);
        if (!lrsa && &way == &kDqWays[0]) dense_ms = r.ms;
        report(t.p, way.name, r, dense_ms);
      }
      // d128 steps are half a query tile: the rule's unit lengths (tuned at d64 with red.v4) against the
      // others, with training's way.
      for (int unit : {12, 24, 48})
        if (d128 && lrsa && unit != unit_query_tiles(T / documents, t.p.Hq / t.p.Hk)) {
          const DqWay& way = training_way(128);
          char name[40];
          std::snprintf(name, sizeof name, "%s, units of %d", way.name, unit);
          report(t.p, name, way.run(t.p, t.fwd, t.d_o, repeats, unit), dense_ms);
        }
    }
  }
  return 0;
}
