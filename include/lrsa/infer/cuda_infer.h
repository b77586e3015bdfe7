#pragma once
// CUDA side of cache_ops.h (kernels/infer_decode.cu); arguments validated by src/infer/cache_ops.cpp.
#ifdef LRSA_WITH_CUDA
#include "lrsa/core/tensor.h"

namespace lrsa::cuda {

// Split-K decode attention: each CTA takes one (query, query head) and a range of cache rows,
// a second kernel merges the ranges' partial softmax results. Head dims 64 and 128.
void cache_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                     const Tensor& limit, Tensor& out);
void cache_append(const Tensor& k, const Tensor& v, const Tensor& seq, const Tensor& limit, Tensor& k_cache,
                  Tensor& v_cache);
void gather_head_rows(const Tensor& src, const Tensor& index, Tensor& dst);

}  // namespace lrsa::cuda
#endif
