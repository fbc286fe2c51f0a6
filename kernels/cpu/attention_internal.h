// Per-ISA entry points of the attention kernels (selected once at start-up, as the matmul's).
#pragma once

#include "kernels/cpu/attention.h"

namespace blockserve::kernels::internal {

#define BS_ATTN_DECLARE(suffix)                                                              \
  void AttendOne##suffix(const float* q, const PageTable& kv, int n_ctx, const AttentionShape& s, \
                         int head_begin, int head_end, float* scores, float* out);            \
  void AttendRows##suffix(const float* q, int ldq, int rows, const PageTable& kv, int n_ctx0,  \
                          const AttentionShape& s, int head_begin, int head_end, float* scores, \
                          int lds, float* out, int ldo);
BS_ATTN_DECLARE(Avx512)
BS_ATTN_DECLARE(Avx2)
BS_ATTN_DECLARE(Generic)
#undef BS_ATTN_DECLARE

}  // namespace blockserve::kernels::internal
