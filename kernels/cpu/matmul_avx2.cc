#define MATMUL_GENERIC_NAME MatmulPanelsAvx2
#include "kernels/cpu/matmul_generic.inc"
