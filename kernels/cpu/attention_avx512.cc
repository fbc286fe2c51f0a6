#define ATTN_SUFFIX Avx512
#define ATTN_MAX_ROWS 8
#include "kernels/cpu/attention_impl.inc"
