// dev/wgmma_attn_fwd.cu: the variants of kernels/attn_wgmma_forward.cuh (the attention forward on
// wgmma + TMA, head dim 64 or 128, dense causal and LRSA over packed documents) side by side
// (dev/README.md).
// First the plans on the CPU: every row of every query tile sees each of its keys once through the
// key tiles and masks, against the spec's visibility.
// Then, on an sm_90 GPU, checks O and the log-sum-exp against a reference in double (dense and LRSA
// shapes: partition boundaries off the tiles, S = 0, T < S + 2L, GQA 1..4, packed documents; each at
// d64 and d128), then times T = 16K, 32K (also as 4 documents) and 128K, dense and LRSA (S = 16,
// L = 1024, K = 256): the d64 variants at the Qwen2.5-0.5B shape (14:2 heads), or with --d128 the
// d128 ones at Qwen2.5-7B's (28:4).
//
//   build-gpu/dev-wgmma_attn_fwd [--check | --d128 | --training]   (or: bash dev/run.sh wgmma_attn_fwd)
#include <future>

#include "../kernels/attn_wgmma_forward.cuh"
#include "attention_problem.h"
#include "hopper.cuh"

using namespace lrsa::cuda::wgmma::fwd;

struct DeviceRun {
  std::vector<__nv_bfloat16> o;
  std::vector<float> lse;
  float ms = 0;
  std::vector<CtaSpan> spans;  // of one more run, when timed
};

template <int kHeadDim, int kConsumers, bool kOverlap, bool kPingPong, int kStages>
DeviceRun run(const Problem& p, int repeats) {
  using C = Config<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
  const size_t nq = p.q.size();
  __nv_bfloat16 *q = upload(p.q), *k = upload(p.k), *v = upload(p.v), *o;
  __nv_bfloat16 *ck = p.lag ? upload(p.ck) : k, *cv = p.lag ? upload(p.cv) : v;
  float* lse;
  CHECK_CUDA(cudaMalloc(&o, nq * 2));
  CHECK_CUDA(cudaMalloc(&lse, size_t(p.Hq) * p.T * 4));
  CHECK_CUDA(cudaMemset(o, 0xFF, nq * 2));  // NaN: an unwritten row fails the check
  CHECK_CUDA(cudaMemset(lse, 0xFF, size_t(p.Hq) * p.T * 4));
  const CUtensorMap q_map = tensor_map(q, p.T, p.Hq, C::kBlockM, kHeadDim),
                    k_map = tensor_map(k, p.T, p.Hk, kBlockN, kHeadDim),
                    v_map = tensor_map(v, p.T, p.Hk, kBlockN, kHeadDim);
  const int compacted = p.lag ? std::max(p.compacted_rows(), 1) : p.T;
  const CUtensorMap ck_map = tensor_map(ck, compacted, p.Hk, kBlockN, kHeadDim),
                    cv_map = tensor_map(cv, compacted, p.Hk, kBlockN, kHeadDim);
  const Lrsa lrsa = p.lrsa();
  const std::vector<QueryTile> tiles_host = query_tiles(p.doc_start, p.compacted_start, lrsa, C::kBlockM);
  QueryTile* tiles = upload(tiles_host);
  auto kernel = attn_fwd_kernel<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
  CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
  int* next_item = nullptr;
  CHECK_CUDA(cudaMalloc(&next_item, sizeof(int)));
  CHECK_CUDA(cudaMemset(next_item, 0, sizeof(int)));
  const ForwardItems items{int(tiles_host.size()) * p.Hq, next_item};
  const int ctas = resident_ctas(kernel, C::kThreads, C::kSmemBytes, items.count);
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  auto launch = [&](CtaSpan* spans = nullptr) {
    kernel<<<ctas, C::kThreads, C::kSmemBytes>>>(q_map, k_map, v_map, ck_map, cv_map, lrsa, tiles, items, o,
                                                 int64_t(p.Hq) * kHeadDim, lse, p.T, p.Hq, p.Hk, scale, spans);
  };
  launch();  // warm-up, and the result checked
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  DeviceRun out;
  out.o.resize(nq);
  out.lse.resize(size_t(p.Hq) * p.T);
  CHECK_CUDA(cudaMemcpy(out.o.data(), o, nq * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.lse.data(), lse, out.lse.size() * 4, cudaMemcpyDeviceToHost));
  if (repeats > 0) {
    out.ms = time_ms([&] { launch(); }, repeats);
    out.spans = record_spans(launch, size_t(items.count));
  }
  int left = -1;  // the kernel leaves its counter zero for the next launch
  CHECK_CUDA(cudaMemcpy(&left, next_item, sizeof(int), cudaMemcpyDeviceToHost));
  if (left != 0) {
    std::fprintf(stderr, "the forward left its item counter at %d, not 0\n", left);
    std::exit(1);
  }
  for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)o, (void*)lse, (void*)tiles, (void*)next_item})
    CHECK_CUDA(cudaFree(ptr));
  if (p.lag) {
    CHECK_CUDA(cudaFree(ck));
    CHECK_CUDA(cudaFree(cv));
  }
  return out;
}

// O and the lse by FlashAttention's tolerance rule (RuleCheck); the lse's floor is absolute.
bool check(const char* name, const Problem& p, const Reference& ref, const DeviceRun& r) {
  const RuleCheck o = rule_check(r.o, ref.o, ref.o_simple), lse = rule_check(r.lse, ref.lse, ref.lse_simple);
  const bool ok = o.within(1e-5 * o.largest) && lse.within(1e-6);
  std::printf("%-36s check T=%4d (%d docs) %d:%d d%d S=%d L=%d K=%d: O max error %.3g (straightforward bf16 "
              "%.3g), lse %.3g (%.3g): %s\n",
              name, p.T, p.documents(), p.Hq, p.Hk, p.D, p.sink, p.lag, p.keep, o.error, o.simple, lse.error,
              lse.simple, ok ? "PASS" : "FAIL");
  return ok;
}

struct Shape {
  std::vector<int> lengths;  // of the packed documents
  int Hq, Hk, sink, lag, keep;
};
// Dense, then LRSA: partition boundaries off the tiles, S = 0, a short L, T < S + 2L, GQA 1..4, and
// packed documents (lengths off the tiles, one shorter than the sinks).
const Shape kCheckShapes[] = {{{256}, 2, 1, 0, 0, 0},
                              {{1000}, 4, 2, 0, 0, 0},
                              {{1024}, 4, 2, 0, 0, 0},
                              {{300, 1000, 77, 700}, 4, 2, 0, 0, 0},
                              {{1000}, 4, 2, 16, 128, 32},
                              {{1500}, 2, 1, 5, 200, 50},
                              {{700}, 4, 1, 0, 100, 25},
                              {{300}, 2, 2, 16, 160, 40},
                              {{2600}, 2, 1, 300, 256, 64},
                              {{1000, 10, 500, 1300}, 4, 2, 16, 128, 32},
                              {{700, 2600}, 2, 1, 300, 256, 64}};

// The timed shapes: one document of T tokens, or T tokens packed as `documents` equal ones.
struct TimedShape {
  int T, documents;
};
const TimedShape kTimedShapes[] = {{16384, 1}, {32768, 1}, {32768, 4}, {131072, 1}};

// Checks a variant on the problems of its head dim and, if `timed`, times it at Qwen2.5-0.5B's heads
// (14:2 x d64) or Qwen2.5-7B's (28:4 x d128).
template <int kHeadDim, int kConsumers, bool kOverlap, bool kPingPong, int kStages>
bool variant(const std::vector<Problem>& problems, const std::vector<Reference>& refs, bool timed) {
  char name[96];
  std::snprintf(name, sizeof name, "d%d, %d consumers%s%s, %d stages", kHeadDim, kConsumers,
                kOverlap ? ", overlap" : "", kPingPong ? ", pingpong" : "", kStages);
  auto run_variant = run<kHeadDim, kConsumers, kOverlap, kPingPong, kStages>;
  bool ok = true;
  for (size_t i = 0; i < problems.size(); ++i)
    if (problems[i].D == kHeadDim) ok = check(name, problems[i], refs[i], run_variant(problems[i], 0)) && ok;
  if (!ok || !timed) return ok;  // no timing of a wrong kernel
  const int Hq = kHeadDim == 64 ? 14 : 28, Hk = kHeadDim == 64 ? 2 : 4;
  for (const TimedShape& shape : kTimedShapes) {
    const int T = shape.T;
    const std::vector<int> lengths(shape.documents, T / shape.documents);
    double dense_ms = 0, dense_pairs = 0;
    for (int lag : {0, 1024}) {
      const Problem p = lag ? make_problem(lengths, Hq, Hk, 99, 16, 1024, 256, kHeadDim)
                            : make_problem(lengths, Hq, Hk, 99, 0, 0, 0, kHeadDim);
      const DeviceRun r = run_variant(p, T > 32768 ? 3 : 20);
      const double flops = 4.0 * visible_pairs(p) * kHeadDim * p.Hq;
      if (lag == 0) dense_ms = r.ms, dense_pairs = visible_pairs(p);
      std::printf("%-36s time T=%6d (%d docs) %d:%d d%d %-24s %7.3f ms, %5.1f TFLOP/s on the visible pairs%s", name,
                  T, shape.documents, Hq, Hk, kHeadDim, lag ? "LRSA S=16 L=1024 K=256:" : "dense causal:", r.ms,
                  flops / (r.ms * 1e-3) / 1e12, lag ? "" : "\n");
      if (lag) std::printf(", %.3f of dense (pairs %.3f)\n", r.ms / dense_ms, visible_pairs(p) / dense_pairs);
      span_report(name, r.spans);
    }
  }
  return true;
}

// The plan on the CPU, for query tiles of `tile_rows` rows: every CTA of query_tiles has a key tile
// (the kernel waits for one), and its key tiles, through the softmax's masks (none on a warpgroup's
// whole tiles) and without those a warpgroup skips (TilePlan::seen), let every row see each of its
// keys once (PairCounts).
bool plan_check(const Problem& p, int tile_rows) {
  const Lrsa lrsa = p.lrsa();
  const std::vector<QueryTile> tiles = query_tiles(p.doc_start, p.compacted_start, lrsa, tile_rows);
  for (int kv_head = 0; kv_head < p.Hk; ++kv_head) {
    PairCounts counts(p, kv_head);
    for (const QueryTile& w : tiles) {
      const int first = w.m_block * tile_rows - lrsa.shift;
      const TilePlan plan(lrsa, first, std::min(first + tile_rows, w.length) - 1);
      if (plan.tiles < 1) {
        std::printf("forward plan: the CTA of rows %d.. of the document at row %d has no key tile\n", first, w.begin);
        return false;
      }
      for (int j = 0; j < plan.tiles; ++j)
        for (int wg_row = first; wg_row < first + tile_rows; wg_row += 64) {
          const int wg_last = std::min(wg_row + 63, w.length - 1);
          if (!plan.seen(lrsa, wg_row, wg_last)(j)) continue;  // the kernel skips it
          const bool whole = plan.whole(lrsa, wg_row, wg_last)(j);
          for (int row = std::max(wg_row, 0); row <= wg_last; ++row) {  // rows before the document are not stored
            const int2 c = whole ? int2{0, kBlockN} : plan.columns(j, row, lrsa.compacted_end(row), lrsa.raw_begin(row));
            for (int col = std::max(c.x, 0); col < std::min(c.y, kBlockN); ++col) {
              const int query = w.begin + row, key = plan.start(j) + col;
              if (plan.compacted(j))
                counts.visit_compacted(query, w.compacted_begin + key);
              else
                counts.visit(query, w.begin + key);
            }
          }
        }
    }
    if (!counts.exact("forward plan")) return false;
  }
  return true;
}

int main(int argc, char** argv) {
  const std::string flag = harness_flag(argc, argv, "wgmma_attn_fwd", {"--d128", "--training"});
  std::vector<Problem> problems;
  for (const Shape& s : kCheckShapes)
    for (int head_dim : {64, 128})
      problems.push_back(make_problem(s.lengths, s.Hq, s.Hk, 7 + s.lengths[0], s.sink, s.lag, s.keep, head_dim));
  bool ok = true;  // the plans first: on the CPU, so they are checked without a GPU too (the head dim's alike)
  for (const Problem& p : problems)
    if (p.D == 64)
      for (int tile_rows : {64, 128, 192}) ok = plan_check(p, tile_rows) && ok;
  std::printf("wgmma_attn_fwd: plans of 64-, 128- and 192-row query tiles over %zu problems: %s\n",
              problems.size() / 2, ok ? "PASS" : "FAIL");
  if (!ok) return 1;
  require_hopper("wgmma_attn_fwd");
  // The references in double, a thread per problem (they take most of the checks' time).
  std::vector<std::future<Reference>> pending;
  for (const Problem& p : problems) pending.push_back(std::async(std::launch::async, [&p] { return reference(p); }));
  std::vector<Reference> refs;
  for (auto& r : pending) refs.push_back(r.get());
  // --training: training's variant of each head dim alone (kernels/attn_wgmma.cu), for A/Bs.
  const bool time_d64 = flag.empty(), time_d128 = flag == "--d128", training = flag == "--training";
  ok = variant<64, 2, false, false, 2>(problems, refs, time_d64) && ok;
  ok = variant<64, 1, false, false, 2>(problems, refs, time_d64) && ok;
  ok = variant<64, 2, true, false, 4>(problems, refs, time_d64) && ok;
  ok = variant<64, 2, true, true, 3>(problems, refs, time_d64) && ok;
  ok = variant<64, 3, false, false, 2>(problems, refs, time_d64 || training) && ok;  // training's
  ok = variant<128, 2, false, false, 3>(problems, refs, time_d128) && ok;
  ok = variant<128, 2, true, false, 2>(problems, refs, time_d128) && ok;
  ok = variant<128, 2, true, false, 3>(problems, refs, time_d128) && ok;
  ok = variant<128, 2, true, true, 2>(problems, refs, time_d128) && ok;
  ok = variant<128, 2, true, true, 3>(problems, refs, time_d128 || training) && ok;  // training's
  return ok ? 0 : 1;
}
