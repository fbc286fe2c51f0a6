// Packed matmul alone: GFLOP/s against the FMA peak for prefill-sized batches, and GB/s of
// weights against the read bandwidth for decode-sized ones, both measured in the same run.
//   build/bin/matmul_bench [--threads N] [--m 1,8,32,92,512] [--cold]
// --cold: every call reads a different copy of the weights (256 MiB of copies in all), as the
// layers of a forward pass do, so weights come from DRAM and not from a warm cache.
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
  std::vector<int> ms = {1, 8, 32, 512};
  bool cold = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--m") && i + 1 < argc) {
      ms.clear();
      for (const char* p = argv[++i]; *p;) {
        char* end = nullptr;
        ms.push_back(static_cast<int>(std::strtol(p, &end, 10)));
        if (ms.back() < 1 || end == p) {
          std::fprintf(stderr, "--m: a comma-separated list of row counts\n");
          return 2;
        }
        p = *end == ',' ? end + 1 : end;
      }
    } else if (!std::strcmp(argv[i], "--cold")) {
      cold = true;
    } else {
      std::fprintf(stderr, "usage: matmul_bench [--threads N] [--m 1,8,32,512] [--cold]\n");
      return 2;
    }
  }
  runtime::CpuDevice cpu(threads);
  const double bw = MeasureReadBandwidth(cpu.pool(), size_t{1} << 30, 5);
  const double peak = MeasureFmaPeak(cpu.pool(), 3);
  std::printf("matmul_bench: %s; read %.1f GB/s, FMA peak %.1f GFLOP/s; %s weights\n",
              cpu.name().c_str(), bw, peak, cold ? "cold (DRAM)" : "warm (cache)");
  nlohmann::json out = {{"bandwidth_gbs", bw}, {"fma_peak_gflops", peak}, {"cold", cold}};
  struct Shape {
    int n, k;
  };
  for (runtime::DType dt : {runtime::DType::kF32, runtime::DType::kF16}) {
    for (Shape s : {Shape{2304, 768}, Shape{4096, 768}, Shape{768, 2048}, Shape{32000, 768}}) {
      runtime::Tensor w = runtime::Tensor::Zeros(dt, {s.n, s.k});
      std::vector<runtime::PackedLinear> lins;
      do {
        auto lin = runtime::PackedLinear::Pack({&w}, dt);
        if (!lin.ok()) return 1;
        lins.push_back(std::move(*lin));
      } while (cold && lins.size() * lins[0].bytes() < (size_t{256} << 20));
      const auto& lin = lins[0];
      for (int m : ms) {
        std::vector<float> x(static_cast<size_t>(m) * s.k, 0.5f), y(static_cast<size_t>(m) * s.n);
        const int reps = std::max<int>(cold ? static_cast<int>(lins.size()) : 5,
                                       m >= 256 ? 5 : 40);
        for (const auto& l : lins) l.Forward(cpu.pool(), x.data(), m, y.data());  // first touch
        const double t0 = Now();
        for (int r = 0; r < reps; ++r) {
          lins[r % lins.size()].Forward(cpu.pool(), x.data(), m, y.data());
        }
        const double dt_s = (Now() - t0) / reps;
        const double gflops = 2.0 * m * s.n * s.k / dt_s / 1e9;
        const double gbs = lin.bytes() / dt_s / 1e9;
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
