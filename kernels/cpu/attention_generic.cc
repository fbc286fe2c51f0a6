#define ATTN_SUFFIX Generic
#define ATTN_MAX_ROWS 1
#include "kernels/cpu/attention_impl.inc"
