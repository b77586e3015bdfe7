#pragma once
// Kernels of the inference KV cache (CPU here, CUDA in kernels/infer_decode.cu). Layouts:
//   cache k/v  [B, cap, Hk, D]  rows of sequence b: [0, rows(b)) (see kv_cache.h)
//   q, out     [N, Hq, D]       N query tokens, each of one sequence
// dtype f32 or bf16 (one dtype throughout); last two dimensions contiguous.
#include "lrsa/core/tensor.h"

namespace lrsa::infer {

// out[n, h] = softmax(q[n, h] . k[seq[n], r, h / G] / sqrt(D)) @ v[seq[n], r, h / G] over the rows
// r < limit[n] (G = Hq / Hk): query n sees exactly the first limit[n] rows of its sequence's
// cache. seq, limit: i32 [N] on the tensors' device. Scores, softmax and sums in fp32.
void cache_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                     const Tensor& limit, Tensor& out);

// k_cache[seq[n], limit[n] - 1] = k[n] and v_cache[seq[n], limit[n] - 1] = v[n] for every token n:
// a step's rows go into the cache where cache_attention's limits put them (its sequence's rows,
// then itself). k, v [N, Hk, D] (rows may be strided, e.g. k of a fused qkv buffer). The rows come
// from device memory, so a replayed CUDA graph appends where each replay's limits say; the CUDA
// kernel does not check them (the caller did: KvCache::check_step) but skips a row outside the
// cache rather than write out of bounds.
void cache_append(const Tensor& k, const Tensor& v, const Tensor& seq, const Tensor& limit, Tensor& k_cache,
                  Tensor& v_cache);

// dst[i, h] = src[index[h, i], h] for every KV head h: src [R, Hk, D] (rows may be strided, e.g.
// k of a fused qkv buffer), index i32 [Hk, n], dst [n, Hk, D] (may be a view into a cache).
void gather_head_rows(const Tensor& src, const Tensor& index, Tensor& dst);

}  // namespace lrsa::infer
