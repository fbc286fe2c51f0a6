#include "bench/roofline.h"

#include <immintrin.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "runtime/tensor.h"

namespace blockserve::bench {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((target("avx512f"))) float SumAvx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// The same with software prefetch `kAhead` bytes ahead, as the GEMV kernels stream weights: on
// some machines (this VM among them) that reads faster than the hardware prefetchers alone, and
// a roofline below what a kernel achieves would flatter the kernel.
__attribute__((target("avx512f"))) float SumAvx512Prefetch(const float* p, size_t n) {
  constexpr size_t kAhead = 3072 / sizeof(float);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    for (int l = 0; l < 4; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kAhead + 16 * l), _MM_HINT_T0);
    }
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float SumPortable(const float* p, size_t n) {
  float acc[16] = {};
  for (size_t i = 0; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += p[i + j];
  }
  float s = 0;
  for (float v : acc) s += v;
  return s;
}

__attribute__((target("avx512f,fma"))) float FmaAvx512(int64_t iters) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(0.001f * j);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  __m512 s = acc[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, acc[j]);
  return _mm512_reduce_add_ps(s);
}

volatile float g_sink;

}  // namespace

double MeasureReadBandwidth(runtime::ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float) / 64 * 64;
  auto buf = runtime::AllocateAligned(n * sizeof(float));  // zero-filled: pages are touched
  const float* p = static_cast<const float*>(buf.get());
  const bool avx512 = __builtin_cpu_supports("avx512f");
  double best = 0;
  // Each repetition reads the buffer once plainly and once with software prefetch (AVX-512
  // machines); the best of all is the roofline.
  for (int r = 0; r < reps; ++r) {
    for (int prefetch = 0; prefetch < (avx512 ? 2 : 1); ++prefetch) {
      const double t0 = Now();
      pool.Run(pool.size(), [&](int i) {
        const size_t b = n * i / pool.size() / 64 * 64, e = n * (i + 1) / pool.size() / 64 * 64;
        g_sink = !avx512    ? SumPortable(p + b, e - b)
                 : prefetch ? SumAvx512Prefetch(p + b, e - b)
                            : SumAvx512(p + b, e - b);
      });
      best = std::max(best, n * sizeof(float) / (Now() - t0) / 1e9);
    }
  }
  return best;
}

double MeasureFmaPeak(runtime::ThreadPool& pool, int reps) {
  if (!__builtin_cpu_supports("avx512f")) return 0;
  constexpr int64_t kIters = 20'000'000;
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    pool.Run(pool.size(), [&](int) { g_sink = FmaAvx512(kIters); });
    const double flops = 2.0 * 16 * 16 * kIters * pool.size();
    best = std::max(best, flops / (Now() - t0) / 1e9);
  }
  return best;
}

}  // namespace blockserve::bench
