// Packed matmul alone: GFLOP/s against the FMA peak for prefill-sized batches, and GB/s of
// weights against the read bandwidth for decode-sized ones, both measured in the same run.
//   build/bin/matmul_bench [--threads N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/roofline.h"
#include "blockzoo/synthetic.h"
#include "runtime/device.h"
#include "runtime/linear.h"

namespace blockserve::bench {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int Main(int argc, char** argv) {
  int threads = runtime::DefaultThreadCount();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
  }
  runtime::CpuDevice cpu(threads);
  const double bw = MeasureReadBandwidth(cpu.pool(), size_t{1} << 30, 5);
  const double peak = MeasureFmaPeak(cpu.pool(), 3);
  std::printf("matmul_bench: %s; read %.1f GB/s, FMA peak %.1f GFLOP/s\n", cpu.name().c_str(), bw, peak);
  nlohmann::json out = {{"bandwidth_gbs", bw}, {"fma_peak_gflops", peak}};
  struct Shape {
    int n, k;
  };
  for (runtime::DType dt : {runtime::DType::kF32, runtime::DType::kF16}) {
    for (Shape s : {Shape{2304, 768}, Shape{4096, 768}, Shape{768, 2048}, Shape{32000, 768}}) {
      runtime::Tensor w = runtime::Tensor::Zeros(dt, {s.n, s.k});
      auto lin = runtime::PackedLinear::Pack({&w}, dt);
      for (int m : {1, 8, 32, 512}) {
        std::vector<float> x(static_cast<size_t>(m) * s.k, 0.5f), y(static_cast<size_t>(m) * s.n);
        const int reps = m == 512 ? 5 : 40;
        lin->Forward(cpu.pool(), x.data(), m, y.data());
        const double t0 = Now();
        for (int r = 0; r < reps; ++r) lin->Forward(cpu.pool(), x.data(), m, y.data());
        const double dt_s = (Now() - t0) / reps;
        const double gflops = 2.0 * m * s.n * s.k / dt_s / 1e9;
        const double gbs = lin->bytes() / dt_s / 1e9;
        std::printf("  %s n=%5d k=%4d m=%3d: %7.1f GFLOP/s (%5.1f%% peak)  %6.1f GB/s (%5.1f%% bw)\n",
                    runtime::DTypeName(dt), s.n, s.k, m, gflops, 100 * gflops / peak, gbs, 100 * gbs / bw);
        out[runtime::DTypeName(dt)][std::to_string(s.n) + "x" + std::to_string(s.k)][std::to_string(m)] =
            {{"gflops", gflops}, {"gbs", gbs}};
      }
    }
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
