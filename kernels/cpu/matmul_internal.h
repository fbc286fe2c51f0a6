// Per-ISA entry points of the packed matmul (selected once at start-up).
#pragma once

#include "kernels/cpu/matmul.h"

namespace blockserve::kernels::internal {

using MatmulFn = void (*)(const float* x, int m, int ldx, const PackedMatrix& w, int p0, int p1,
                          float* y, int ldy);

void MatmulPanelsAvx512(const float*, int, int, const PackedMatrix&, int, int, float*, int);
void MatmulPanelsAvx2(const float*, int, int, const PackedMatrix&, int, int, float*, int);
void MatmulPanelsGeneric(const float*, int, int, const PackedMatrix&, int, int, float*, int);

// Rows of x per register tile and k-chunk length (the packed panel chunk stays in L1).
constexpr int kKChunk = 128;

}  // namespace blockserve::kernels::internal
