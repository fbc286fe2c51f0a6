#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/vec_math.h"
#include "kernels/half.h"

namespace blockserve::kernels {
namespace {

// 16 floats as one value; each target_clones clone lowers it to its widest registers. Every
// helper below is always_inline, so no vector crosses a call boundary (whose ABI would differ
// between clones).
typedef float V16 __attribute__((vector_size(64)));
constexpr int kL = kPageAlign;

#define BS_INLINE __attribute__((always_inline)) inline

BS_INLINE V16 Load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
BS_INLINE void Store16(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }

// 16 bf16 values widened to f32 (exact: bf16 is the top half of an f32).
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));
BS_INLINE V16 Load16(const uint16_t* p) {
  U16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const U32x16 w = __builtin_convertvector(h, U32x16) << 16;
  V16 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

BS_INLINE float ToFloat(float x) { return x; }
BS_INLINE float ToFloat(uint16_t x) { return BF16ToFloat(x); }

// Element `i` of a page of KV element type T.
template <typename T>
BS_INLINE const T* At(const void* page, size_t i) {
  return static_cast<const T*>(page) + i;
}

// The arithmetic every query goes through, whatever else is computed alongside it — so a row
// attended with its neighbours (prefill) is bit-identical to the same row attended alone
// (decode):
//   score_t = (sum over i ascending of q_i * K_i,t, one FMA chain from 0) * scale;
//   p_t = ExpApprox(score_t - max), sum = 16 lane sums (lane t % 16, t ascending) added 0..15;
//   out = (even + odd) * (1 / sum) per dimension, where even (odd) is one FMA chain from 0 over
//   the keys t of that parity, ascending.
// Kernels below differ only in how many rows, key blocks and dimensions share their loads.

// Scores of R rows (row r: query q + r * ldq) for NB key blocks from t0, into scores + r * lds.
template <typename T, int R, int NB>
BS_INLINE void ScoresPass(const float* q, int ldq, const void* const* k_pages, int t0,
                          const AttentionShape& s, int head_off, float scale, float* scores,
                          int lds) {
  const int hd = s.head_dim, ps = s.page_size;
  const T* k[NB];
  for (int b = 0; b < NB; ++b) {
    const int t = t0 + b * kL;
    k[b] = At<T>(k_pages[t / ps], head_off + t % ps);
  }
  V16 acc[R][NB] = {};
  for (int i = 0; i < hd; ++i) {
    for (int b = 0; b < NB; ++b) {
      const V16 kv = Load16(k[b] + i * ps);
      for (int r = 0; r < R; ++r) acc[r][b] += q[r * ldq + i] * kv;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) Store16(scores + r * lds + t0 + b * kL, acc[r][b] * scale);
  }
}

// Scores of R rows against keys [0, n_keys) of kv head `kvh` (rounded up to whole key blocks;
// entries past a row's context are junk that its softmax overwrites). Passes of KB key blocks
// keep R * KB >= 8 FMA chains in flight (the FMA latency times its throughput); the last pass
// takes what is left.
template <typename T, int R>
BS_INLINE void Scores(const float* q, int ldq, const void* const* k_pages, int n_keys,
                      const AttentionShape& s, int kvh, float scale, float* scores, int lds) {
  constexpr int KB = R == 1 ? 8 : R == 2 ? 4 : 2;
  const int head_off = kvh * s.head_dim * s.page_size;
  const int blocks = (n_keys + kL - 1) / kL;
  int b = 0;
  for (; b + KB <= blocks; b += KB) {
    ScoresPass<T, R, KB>(q, ldq, k_pages, b * kL, s, head_off, scale, scores, lds);
  }
  const int t0 = b * kL;
  switch (blocks - b) {
#define BS_PASS(n)                                                              \
  case n:                                                                       \
    if constexpr (n < KB) {                                                     \
      ScoresPass<T, R, n>(q, ldq, k_pages, t0, s, head_off, scale, scores, lds);   \
    }                                                                           \
    break;
    BS_PASS(1) BS_PASS(2) BS_PASS(3) BS_PASS(4) BS_PASS(5) BS_PASS(6) BS_PASS(7)
#undef BS_PASS
    default:
      break;
  }
}

// scores[0, n) -> exp(score - max) in place (and -inf -> 0 padding up to a whole block);
// returns 1 / sum.
BS_INLINE float Softmax(float* scores, int n) {
  const int n_pad = (n + kL - 1) / kL * kL;
  for (int t = n; t < n_pad; ++t) scores[t] = -INFINITY;  // padding weighs nothing
  V16 m = Load16(scores);
  for (int t0 = kL; t0 < n_pad; t0 += kL) {
    const V16 v = Load16(scores + t0);
    m = v > m ? v : m;
  }
  float max_score = m[0];
  for (int j = 1; j < kL; ++j) max_score = m[j] > max_score ? m[j] : max_score;
  float lane_sum[kL] = {};
  for (int t0 = 0; t0 < n_pad; t0 += kL) {
    for (int j = 0; j < kL; ++j) {
      scores[t0 + j] = ExpApprox(scores[t0 + j] - max_score);
      lane_sum[j] += scores[t0 + j];
    }
  }
  float sum = 0.0f;
  for (int j = 0; j < kL; ++j) sum += lane_sum[j];
  return 1.0f / sum;
}

// out rows (R of them, ldo apart) for C vector columns starting at dimension `d0` of kv head
// `kvh`: row r sums keys [0, n_ctx0 + r). Two FMA chains per output (even and odd keys, added
// at the end) so a single row keeps enough chains in flight; V loads are shared by the rows.
template <typename T, int R, int C>
BS_INLINE void WeightedValues(const float* p, int lds, int n_ctx0, const void* const* v_pages,
                              const AttentionShape& s, int kvh, int d0, const float* inv,
                              float* out, int ldo) {
  const int ps = s.page_size, kv_dim = s.n_kv_heads * s.head_dim;
  const int off = kvh * s.head_dim + d0;
  V16 acc[2][R][C] = {};
  // Keys every row has, page by page, in pairs (pages hold a multiple of 16 keys).
  for (int t = 0, page = 0; t < n_ctx0; ++page) {
    const T* v = At<T>(v_pages[page], off);
    const int end = t + ps < n_ctx0 ? t + ps : n_ctx0;
    for (; t + 1 < end; t += 2, v += 2 * kv_dim) {
      V16 v0[C], v1[C];
      for (int c = 0; c < C; ++c) v0[c] = Load16(v + c * kL);
      for (int c = 0; c < C; ++c) v1[c] = Load16(v + kv_dim + c * kL);
      for (int r = 0; r < R; ++r) {
        const float p0 = p[r * lds + t], p1 = p[r * lds + t + 1];
        for (int c = 0; c < C; ++c) acc[0][r][c] += p0 * v0[c];
        for (int c = 0; c < C; ++c) acc[1][r][c] += p1 * v1[c];
      }
    }
    if (t < end) {  // an odd count: the last key is even
      for (int r = 0; r < R; ++r) {
        const float p0 = p[r * lds + t];
        for (int c = 0; c < C; ++c) acc[0][r][c] += p0 * Load16(v + c * kL);
      }
      ++t;
    }
  }
  // Key n_ctx0 + e belongs to rows e + 1 .. R - 1 only.
  for (int e = 0; e + 1 < R; ++e) {
    const int t = n_ctx0 + e;
    const T* v = At<T>(v_pages[t / ps], (t % ps) * kv_dim + off);
    for (int r = e + 1; r < R; ++r) {
      const float pr = p[r * lds + t];
      for (int c = 0; c < C; ++c) acc[t & 1][r][c] += pr * Load16(v + c * kL);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      Store16(out + r * ldo + d0 + c * kL, (acc[0][r][c] + acc[1][r][c]) * inv[r]);
    }
  }
}

// Heads [head_begin, head_end) of R consecutive queries (row r: context n_ctx0 + r).
template <typename T, int R>
BS_INLINE void Attend(const float* q, int ldq, const void* const* k_pages,
                      const void* const* v_pages, int n_ctx0, const AttentionShape& s,
                      int head_begin, int head_end, float* scores, int lds, float* out, int ldo) {
  const int hd = s.head_dim, ps = s.page_size, kv_dim = s.n_kv_heads * hd;
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int h = head_begin; h < head_end; ++h) {
    const int kvh = h / group;
    Scores<T, R>(q + h * hd, ldq, k_pages, n_ctx0 + R - 1, s, kvh, scale, scores, lds);
    float inv[R];
    for (int r = 0; r < R; ++r) inv[r] = Softmax(scores + r * lds, n_ctx0 + r);
    float* oh = out + h * hd;
    if (hd % kL != 0) {  // small heads (e.g. 8 dims): plain loops, one chain per dimension
      // over t ascending (not the even/odd pair: every R takes this same path)
      for (int r = 0; r < R; ++r) {
        float* o = oh + r * ldo;
        const float* p = scores + r * lds;
        for (int i = 0; i < hd; ++i) o[i] = 0.0f;
        for (int t = 0; t < n_ctx0 + r; ++t) {
          const T* v = At<T>(v_pages[t / ps], (t % ps) * kv_dim + kvh * hd);
          for (int i = 0; i < hd; ++i) o[i] += p[t] * ToFloat(v[i]);
        }
        for (int i = 0; i < hd; ++i) o[i] *= inv[r];
      }
      continue;
    }
    // CW vector columns per pass: 2 * R * CW <= 16 accumulators stay in registers.
    constexpr int CW = R <= 2 ? 4 : R <= 4 ? 2 : 1;
    int d0 = 0;
    for (; d0 + CW * kL <= hd; d0 += CW * kL) {
      WeightedValues<T, R, CW>(scores, lds, n_ctx0, v_pages, s, kvh, d0, inv, oh, ldo);
    }
    switch ((hd - d0) / kL) {
      case 3: WeightedValues<T, R, 3>(scores, lds, n_ctx0, v_pages, s, kvh, d0, inv, oh, ldo); break;
      case 2: WeightedValues<T, R, 2>(scores, lds, n_ctx0, v_pages, s, kvh, d0, inv, oh, ldo); break;
      case 1: WeightedValues<T, R, 1>(scores, lds, n_ctx0, v_pages, s, kvh, d0, inv, oh, ldo); break;
      default: break;
    }
  }
}

#undef BS_INLINE

}  // namespace

namespace {

template <typename T>
void StoreTyped(const float* k, int ldk, const float* v, int ldv, int rows,
                const AttentionShape& s, int slot, T* k_page, T* v_page) {
  auto cast = [](float x) {
    if constexpr (sizeof(T) == 4) {
      return x;
    } else {
      return FloatToBF16(x);
    }
  };
  const int kv_dim = s.n_kv_heads * s.head_dim;
  for (int d = 0; d < kv_dim; ++d) {
    T* dst = k_page + static_cast<size_t>(d) * s.page_size + slot;
    for (int r = 0; r < rows; ++r) dst[r] = cast(k[static_cast<size_t>(r) * ldk + d]);
  }
  for (int r = 0; r < rows; ++r) {
    T* dst = v_page + static_cast<size_t>(slot + r) * kv_dim;
    const float* src = v + static_cast<size_t>(r) * ldv;
    for (int d = 0; d < kv_dim; ++d) dst[d] = cast(src[d]);
  }
}

}  // namespace

void StoreKvRows(const float* k, int ldk, const float* v, int ldv, int rows,
                 const AttentionShape& s, int slot, void* k_page, void* v_page) {
  if (s.kv == KvType::kF32) {
    StoreTyped(k, ldk, v, ldv, rows, s, slot, static_cast<float*>(k_page),
               static_cast<float*>(v_page));
  } else {
    StoreTyped(k, ldk, v, ldv, rows, s, slot, static_cast<uint16_t*>(k_page),
               static_cast<uint16_t*>(v_page));
  }
}

// Vectorised per ISA through target_clones; within one clone every query is computed the same
// way whatever else is in the batch.
__attribute__((target_clones("avx512f", "avx2", "default")))
void AttendOne(const float* q, const void* const* k_pages, const void* const* v_pages,
               int n_ctx, const AttentionShape& s, int head_begin, int head_end, float* scores,
               float* out) {
  const int lds = (n_ctx + kL - 1) / kL * kL;
  if (s.kv == KvType::kF32) {
    Attend<float, 1>(q, 0, k_pages, v_pages, n_ctx, s, head_begin, head_end, scores, lds, out, 0);
  } else {
    Attend<uint16_t, 1>(q, 0, k_pages, v_pages, n_ctx, s, head_begin, head_end, scores, lds, out,
                        0);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void AttendRows(const float* q, int ldq, int rows, const void* const* k_pages,
                const void* const* v_pages, int n_ctx0, const AttentionShape& s, int head_begin,
                int head_end, float* scores, int lds, float* out, int ldo) {
#define BS_ROWS(T, n)                                                                           \
  case n:                                                                                       \
    Attend<T, n>(q, ldq, k_pages, v_pages, n_ctx0, s, head_begin, head_end, scores, lds, out,   \
                 ldo);                                                                          \
    break;
#define BS_ALL_ROWS(T)                                                                          \
  switch (rows) {                                                                               \
    BS_ROWS(T, 1) BS_ROWS(T, 2) BS_ROWS(T, 3) BS_ROWS(T, 4) BS_ROWS(T, 5) BS_ROWS(T, 6)         \
    BS_ROWS(T, 7)                                                                               \
    default:                                                                                    \
      Attend<T, kMaxAttendRows>(q, ldq, k_pages, v_pages, n_ctx0, s, head_begin, head_end,      \
                                scores, lds, out, ldo);                                         \
      break;                                                                                    \
  }
  if (s.kv == KvType::kF32) {
    BS_ALL_ROWS(float)
  } else {
    BS_ALL_ROWS(uint16_t)
  }
#undef BS_ALL_ROWS
#undef BS_ROWS
}

}  // namespace blockserve::kernels
