// Batched matrix multiply against a pre-packed weight matrix: y[m][n] = sum_k x[m][k] * W[n][k].
//
// Weights are packed once at load time into panels of kPanel output columns:
//   packed[p][k][j] = W[p * kPanel + j][k]   (zero for columns past n)
// so that both a single decode token (a streaming matrix-vector product) and a prefill of many
// tokens (a register-blocked GEMM) read the weights as one sequential stream.
//
// Determinism: every output is the same chain of fused multiply-adds over k = 0..K-1 in
// ascending order, whatever m, the row blocking or the number of threads. A sequence's result
// therefore never depends on what else is in its batch (batch invariance, bit for bit).
#pragma once

#include <cstddef>
#include <cstdint>

namespace blockserve::kernels {

enum class WeightType : uint8_t { kF32, kF16, kBF16 };

constexpr int kPanel = 32;

constexpr size_t WeightTypeSize(WeightType t) { return t == WeightType::kF32 ? 4 : 2; }

struct PackedMatrix {
  const void* data = nullptr;  // [NumPanels(n)][k][kPanel] of `type`
  WeightType type = WeightType::kF32;
  int n = 0;  // output features (rows of W)
  int k = 0;  // input features (columns of W)
};

constexpr int NumPanels(int n) { return (n + kPanel - 1) / kPanel; }
constexpr size_t PackedBytes(WeightType t, int n, int k) {
  return static_cast<size_t>(NumPanels(n)) * k * kPanel * WeightTypeSize(t);
}

// Packs rows [row0, row0 + rows) of `src` ([rows][k] of `type`, row-major) into the packed
// matrix `dst` (which holds `n_total` rows), so several matrices can be fused into one
// (for example Q, K and V). Writes only these rows' lanes: the lanes past the last row of the
// last panel are the caller's to zero.
void PackRows(const void* src, WeightType type, int rows, int k, int row0, void* dst);

// Computes output panels [panel_begin, panel_end) for all m rows:
//   y[r * ldy + c] for c in [panel_begin * kPanel, min(panel_end * kPanel, w.n)).
// x: [m][ldx] f32. Thread-safe for disjoint panel ranges (how callers split work).
void MatmulPanels(const float* x, int m, int ldx, const PackedMatrix& w, int panel_begin,
                  int panel_end, float* y, int ldy);

// The implementation MatmulPanels dispatches to on this CPU ("avx512", "avx2", "generic").
const char* MatmulIsa();

}  // namespace blockserve::kernels
