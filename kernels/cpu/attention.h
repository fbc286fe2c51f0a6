// Grouped-query attention of one query token over a paged KV cache.
//
// Page layout (chosen for the kernel): a K page is [n_kv_heads][head_dim][page_size] —
// transposed, so 16 keys' scores come out of one vector FMA per head dimension without
// horizontal sums — and a V page is [page_size][n_kv_heads * head_dim]. Elements are f32 or
// bf16 (AttentionShape::kv): bf16 halves the cache's memory and the bytes attention reads per
// token; K and V are rounded to nearest-even on store and every sum stays f32. A bf16 page keeps
// pairs in 32-bit words (K: dims 2i, 2i+1 of a key; V: slots 2t, 2t+1 of a dimension), so
// head_dim must be even (RoPE needs that anyway).
#pragma once

#include <cstddef>
#include <cstdint>

namespace blockserve::kernels {

enum class KvType : uint8_t { kF32, kBF16 };
constexpr size_t KvTypeSize(KvType t) { return t == KvType::kF32 ? 4 : 2; }

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0; query head h reads kv head h / group
  int head_dim = 0;    // at most kMaxHeadDim (multiples of 16 take the vector path)
  int page_size = 0;   // tokens per KV page, a multiple of kPageAlign
  KvType kv = KvType::kF32;  // element type of the pages
};

constexpr int kPageAlign = 16;

// A sequence's KV pages: its page p is page ids[p] of an arena at `base` whose pages lie
// `page_bytes` apart, the K part first and the V part `v_offset` bytes in. Integer ids, not
// pointers: a page table means the same on any device and across process boundaries.
struct PageTable {
  const uint8_t* base = nullptr;
  size_t page_bytes = 0;
  size_t v_offset = 0;
  const int32_t* ids = nullptr;
  const void* k(int p) const { return base + static_cast<size_t>(ids[p]) * page_bytes; }
  const void* v(int p) const { return base + static_cast<size_t>(ids[p]) * page_bytes + v_offset; }
};
constexpr int kMaxHeadDim = 256;

// Writes `rows` consecutive tokens' k, v ([n_kv_heads * head_dim] each, rows ldk / ldv floats
// apart) into slots [slot, slot + rows) of one page (slot + rows <= page_size). K goes in one
// pass per dimension, so each of its cache lines is written once per call, not once per token.
void StoreKvRows(const float* k, int ldk, const float* v, int ldv, int rows,
                 const AttentionShape& shape, int slot, void* k_page, void* v_page);

// For query heads [head_begin, head_end):
//   out[h] = softmax(q[h] . K[0..n_ctx) / sqrt(head_dim)) . V[0..n_ctx)
// q, out: [n_heads][head_dim]; kv: the sequence's pages;
// scores: scratch of n_ctx rounded up to kPageAlign floats. The result for a query depends only
// on its own inputs (never on other queries computed alongside).
void AttendOne(const float* q, const PageTable& kv,
               int n_ctx, const AttentionShape& shape, int head_begin, int head_end,
               float* scores, float* out);

constexpr int kMaxAttendRows = 8;

// AttendOne for `rows` (<= kMaxAttendRows) consecutive queries of one sequence — row r has
// context n_ctx0 + r — sharing the K loads; each row's result is bit-identical to AttendOne's.
// q, out: rows ldq / ldo floats apart; scores: rows lds floats apart (lds >= the last row's
// context rounded up to kPageAlign).
void AttendRows(const float* q, int ldq, int rows, const PageTable& kv, int n_ctx0, const AttentionShape& shape,
                int head_begin, int head_end, float* scores, int lds, float* out, int ldo);

}  // namespace blockserve::kernels
