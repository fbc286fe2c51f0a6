// Grouped-query attention of one query token over a paged KV cache.
#pragma once

namespace blockserve::kernels {

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0; query head h reads kv head h / group
  int head_dim = 0;
  int page_size = 0;  // tokens per KV page; a page is [page_size][n_kv_heads * head_dim]
};

// For query heads [head_begin, head_end):
//   out[h] = softmax(q[h] . K[0..n_ctx) / sqrt(head_dim)) . V[0..n_ctx)
// q, out: [n_heads][head_dim]; k_pages/v_pages: the sequence's pages in order;
// scores: scratch of n_ctx floats.
void AttendOne(const float* q, const float* const* k_pages, const float* const* v_pages,
               int n_ctx, const AttentionShape& shape, int head_begin, int head_end,
               float* scores, float* out);

}  // namespace blockserve::kernels
