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

// dst[i, h] = src[index[h, i], h] for every KV head h: src [R, Hk, D] (rows may be strided, e.g.
// k of a fused qkv buffer), index i32 [Hk, n], dst [n, Hk, D] (may be a view into a cache).
void gather_head_rows(const Tensor& src, const Tensor& index, Tensor& dst);

}  // namespace lrsa::infer
