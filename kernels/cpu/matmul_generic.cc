#define MATMUL_GENERIC_NAME MatmulPanelsGeneric
#include "kernels/cpu/matmul_generic.inc"
