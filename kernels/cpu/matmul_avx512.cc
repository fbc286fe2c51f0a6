// AVX-512 packed matmul: register tiles of up to 12 rows x 32 columns (24 accumulators).
// Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c; only called when the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cpu/matmul_internal.h"

namespace blockserve::kernels::internal {
namespace {

constexpr int kMaxRows = 12;
// Prefetch distance in panel rows. A single streaming row (decode) wants a short distance that
// keeps the hardware prefetchers in step (3 KiB ahead: 24 f32 rows, 48 f16 rows); multi-row
// tiles run slower per row and fetch the same row of the next chunk (contiguous) so it is in
// L1 when their next chunk starts.
template <int R, size_t kRowBytes>
constexpr int PrefetchRows() {
  return R <= 2 ? static_cast<int>(3072 / kRowBytes) : kKChunk;
}

template <WeightType T>
inline void LoadRow(const uint8_t* p, __m512& lo, __m512& hi) {
  if constexpr (T == WeightType::kF32) {
    const float* f = reinterpret_cast<const float*>(p);
    lo = _mm512_loadu_ps(f);
    hi = _mm512_loadu_ps(f + 16);
  } else if constexpr (T == WeightType::kF16) {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  } else {
    const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i b =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
    hi = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
  }
}

// acc[r] (+)= a[r][0..kc) * panel[0..kc)[0..32) for R rows, `a` packed [R][kc]. `first`: start
// from zero, else continue the chain from the values already in y.
// kFirst is a template parameter, not a branch, so the accumulators start in registers (a
// runtime choice made the compiler stage them through the stack on every call).
template <WeightType T, int R, bool kFirst>
void Tile(const float* a, const uint8_t* panel, int kc, float* y, int ldy, __mmask16 m0,
          __mmask16 m1) {
  constexpr size_t kRowBytes = kPanel * WeightTypeSize(T);
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if constexpr (kFirst) {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    } else {
      acc0[r] = _mm512_maskz_loadu_ps(m0, y + r * ldy);
      acc1[r] = _mm512_maskz_loadu_ps(m1, y + r * ldy + 16);
    }
  }
  for (int k = 0; k < kc; ++k) {
    {  // weights stream from DRAM: prefetch well ahead (the next chunk/panel is contiguous),
       // every cache line of the row (an f32 row of 32 weights spans two)
      const char* ahead =
          reinterpret_cast<const char*>(panel + (k + PrefetchRows<R, kRowBytes>()) * kRowBytes);
      _mm_prefetch(ahead, _MM_HINT_T0);
      if constexpr (kRowBytes > 64) _mm_prefetch(ahead + 64, _MM_HINT_T0);
    }
    __m512 b0, b1;
    LoadRow<T>(panel + k * kRowBytes, b0, b1);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * kc + k]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc0[r]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc1[r]);
  }
}

using TileFn = void (*)(const float*, const uint8_t*, int, float*, int, __mmask16, __mmask16);

// [first k-chunk?][rows - 1]
template <WeightType T, int... Rs>
constexpr auto MakeTiles(std::integer_sequence<int, Rs...>) {
  return std::array<std::array<TileFn, sizeof...(Rs)>, 2>{
      {{&Tile<T, Rs + 1, false>...}, {&Tile<T, Rs + 1, true>...}}};
}

// Rows per block: the block's packed activations (kRowBlock x k floats) stay in L2 while every
// panel of the thread's range streams past them, and each k-chunk of a panel (in L1) serves all
// of the block's tiles.
constexpr int kRowBlock = 4 * kMaxRows;

// One register tile of a row block: `rows` rows starting at `r0`, packed at `a` as
// [chunk][rows][kc]: each tile's chunk is one contiguous run, its rows kc floats apart (x's own
// stride, a multiple of 4 KiB when k = 2048, would put every row in the same L1 sets).
struct TileSpan {
  int r0, rows;
  const float* a;
};

// Splits `mb` rows into ceil(mb / kMaxRows) tiles of near-equal size (32 -> 11+11+10, not
// 12+12+8: a short last tile wastes FMA slots) and packs x's rows for each.
int PackBlock(const float* x, int ldx, int r0, int mb, int k, float* buf, TileSpan* tiles) {
  const int n = (mb + kMaxRows - 1) / kMaxRows;
  int row = r0;
  for (int t = 0; t < n; ++t) {
    const int rows = mb / n + (t < mb % n ? 1 : 0);
    tiles[t] = {row, rows, buf};
    for (int k0 = 0; k0 < k; k0 += kKChunk) {
      const int kc = std::min(kKChunk, k - k0);
      for (int r = 0; r < rows; ++r) {
        std::memcpy(buf + r * kc, x + static_cast<size_t>(row + r) * ldx + k0, kc * sizeof(float));
      }
      buf += static_cast<size_t>(kc) * rows;
    }
    row += rows;
  }
  return n;
}

template <WeightType T>
void Run(const float* x, int m, int ldx, const PackedMatrix& w, int p0, int p1, float* y,
         int ldy) {
  static constexpr auto kTiles = MakeTiles<T>(std::make_integer_sequence<int, kMaxRows>());
  constexpr size_t es = WeightTypeSize(T);
  const auto* data = static_cast<const uint8_t*>(w.data);
  thread_local std::vector<float> packed;
  packed.resize(static_cast<size_t>(std::min(m, kRowBlock)) * w.k);
  TileSpan tiles[kRowBlock / kMaxRows];
  for (int rb = 0; rb < m; rb += kRowBlock) {
    const int ntiles = PackBlock(x, ldx, rb, std::min(kRowBlock, m - rb), w.k, packed.data(), tiles);
    for (int p = p0; p < p1; ++p) {
      const int n0 = p * kPanel;
      const int valid = std::min(kPanel, w.n - n0);
      const __mmask16 m0 = valid >= 16 ? 0xffff : static_cast<__mmask16>((1u << valid) - 1);
      const __mmask16 m1 = valid >= 32 ? 0xffff
                           : valid <= 16
                               ? 0
                               : static_cast<__mmask16>((1u << (valid - 16)) - 1);
      const uint8_t* panel = data + static_cast<size_t>(p) * w.k * kPanel * es;
      for (int k0 = 0; k0 < w.k; k0 += kKChunk) {
        const int kc = std::min(kKChunk, w.k - k0);
        const uint8_t* chunk = panel + static_cast<size_t>(k0) * kPanel * es;
        for (int t = 0; t < ntiles; ++t) {
          const TileSpan& ts = tiles[t];
          kTiles[k0 == 0][ts.rows - 1](ts.a + static_cast<size_t>(k0) * ts.rows, chunk, kc,
                                       y + static_cast<size_t>(ts.r0) * ldy + n0, ldy, m0, m1);
        }
      }
    }
  }
}

}  // namespace

void MatmulPanelsAvx512(const float* x, int m, int ldx, const PackedMatrix& w, int p0, int p1,
                        float* y, int ldy) {
  switch (w.type) {
    case WeightType::kF32:
      return Run<WeightType::kF32>(x, m, ldx, w, p0, p1, y, ldy);
    case WeightType::kF16:
      return Run<WeightType::kF16>(x, m, ldx, w, p0, p1, y, ldy);
    case WeightType::kBF16:
      return Run<WeightType::kBF16>(x, m, ldx, w, p0, p1, y, ldy);
  }
}

}  // namespace blockserve::kernels::internal
