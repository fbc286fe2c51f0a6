// Hardware limits measured in the same run as the benchmarks: memory read bandwidth (a
// STREAM-like sum over a buffer far larger than the caches) and the f32 FMA peak.
#pragma once

#include "runtime/thread_pool.h"

namespace blockserve::bench {

// Best of `reps` passes of every pool thread reading its share of a `bytes` buffer (each pass
// once plainly and, with AVX-512, once with software prefetch ahead, as the kernels read); GB/s.
double MeasureReadBandwidth(runtime::ThreadPool& pool, size_t bytes, int reps);
// Best of `reps` runs of independent FMA chains on every pool thread; GFLOP/s (2 per FMA).
double MeasureFmaPeak(runtime::ThreadPool& pool, int reps);

}  // namespace blockserve::bench
