// What checking a block's content hash on load costs: a synthetic model of realistic shape is
// stored in a scratch zoo, then every block is loaded (mapped, checked against the manifest,
// built into a runnable block) with and without the SHA-256 check, interleaved, `--reps` times;
// the medians and the hash's own throughput over the same bytes are printed. The server always
// verifies (scheduler/zoo_engine.cc); this prints the price.
//   load_bench [--shape llama110m|medium|small] [--dtype f32|f16] [--reps 5]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "blockzoo/importer.h"
#include "blockzoo/sha256.h"
#include "blockzoo/synthetic.h"
#include "blockzoo/zoo.h"
#include "blockzoo/zoo_model.h"

namespace blockserve {
namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Loads every block of `m` once; returns the seconds it took (exits on error).
double LoadAll(const blockzoo::Zoo& zoo, const blockzoo::Manifest& m, bool verify) {
  const auto t0 = std::chrono::steady_clock::now();
  for (const blockzoo::ChainEntry& e : m.chain) {
    auto b = blockzoo::LoadBlock(zoo, e, m.family, runtime::BlockOptions{}, verify);
    if (!b.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(b.status().message()).c_str());
      std::exit(1);
    }
  }
  return Seconds(t0);
}

int Main(int argc, char** argv) {
  std::string shape = "llama110m", dtype = "f32";
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--shape")) shape = argv[i + 1];
    if (!std::strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
    if (!std::strcmp(argv[i], "--reps")) reps = std::max(1, std::atoi(argv[i + 1]));
  }
  const runtime::ModelConfig cfg = shape == "small"    ? blockzoo::SmallConfig()
                                   : shape == "medium" ? blockzoo::MediumConfig()
                                                       : blockzoo::Llama110MConfig();
  const runtime::DType dt = dtype == "f16" ? runtime::DType::kF16 : runtime::DType::kF32;
  bench::ScratchDir dir;
  auto zoo = blockzoo::Zoo::Open(dir.path(), /*create=*/true);
  if (!zoo.ok()) return 1;
  std::fprintf(stderr, "storing a synthetic %s model (%s)...\n", shape.c_str(), dtype.c_str());
  auto imported = blockzoo::ImportSynthetic(**zoo, "m", cfg, dt, 1, nullptr);
  auto m = (*zoo)->GetManifest("m");
  if (!imported.ok() || !m.ok()) return 1;
  uint64_t bytes = 0;
  for (const auto& e : m->chain) bytes += e.bytes;
  std::vector<double> plain, verified, hash_only;
  for (int r = 0; r < reps; ++r) {
    plain.push_back(LoadAll(**zoo, *m, false));
    verified.push_back(LoadAll(**zoo, *m, true));
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& e : m->chain) {
      auto f = (*zoo)->ReadBlock(e.block, &e, false);
      if (f.ok()) (void)blockzoo::Sha256Hex(f->file->data(), f->file->size());
    }
    hash_only.push_back(Seconds(t0));
    std::fprintf(stderr, "  rep %d/%d: load %.3f s, load+verify %.3f s\n", r + 1, reps,
                 plain.back(), verified.back());
  }
  const double p = bench::Percentile(plain, 0.5), v = bench::Percentile(verified, 0.5);
  const double h = bench::Percentile(hash_only, 0.5);
  const double gb = static_cast<double>(bytes) / 1e9;
  std::printf("%zu blocks, %.1f MB (%s %s), medians of %d interleaved runs\n", m->chain.size(),
              gb * 1e3, shape.c_str(), dtype.c_str(), reps);
  std::printf("  load without hash check   %8.3f s  (%6.2f GB/s)\n", p, gb / p);
  std::printf("  load with hash check      %8.3f s  (%6.2f GB/s)  +%.0f%%\n", v, gb / v,
              100 * (v - p) / p);
  std::printf("  SHA-256 alone (mapped)    %8.3f s  (%6.2f GB/s)\n", h, gb / h);
  std::printf("{\"bytes\": %llu, \"load_s\": %.4f, \"load_verify_s\": %.4f, \"sha256_s\": %.4f}\n",
              static_cast<unsigned long long>(bytes), p, v, h);
  return 0;
}

}  // namespace
}  // namespace blockserve

int main(int argc, char** argv) { return blockserve::Main(argc, argv); }
