// Decode attention alone: a batch of sequences, one query token each, over a paged KV cache much
// larger than the caches (several layers' worth, used in turn as a forward pass does), with the
// pages scattered through the pool as a long-running cache leaves them. Prints the K/V bytes read
// per second next to this machine's memory-read bandwidth measured in the same run (decode
// attention reads every K/V element of its context once: it is bound by that traffic), and ends
// with one JSON line.
//   build/bin/attention_bench [--threads N] [--seqs 64] [--context 128,512] [--heads 8]
//                             [--kv-heads 8] [--head-dim 64] [--page-size 16]
//                             [--kv-dtype f32|bf16] [--layers L (default: enough for 512 MiB)]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/roofline.h"
#include "kernels/cpu/attention.h"
#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace blockserve::bench {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    out.push_back(static_cast<int>(std::strtol(p, &end, 10)));
    if (end == p || out.back() < 1) return {};
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

int Main(int argc, char** argv) {
  int threads = runtime::DefaultThreadCount(), seqs = 64, heads = 8, kv_heads = 8, head_dim = 64,
      page_size = 16, layers_flag = 0;
  std::vector<int> contexts = {128, 512};
  runtime::DType kv_dtype = runtime::DType::kF32;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    auto number = [&](int& out) {
      out = std::atoi(v);
      ++i;
      return out > 0;
    };
    bool ok = true;
    if (a == "--threads") {
      ok = number(threads);
    } else if (a == "--seqs") {
      ok = number(seqs);
    } else if (a == "--heads") {
      ok = number(heads);
    } else if (a == "--kv-heads") {
      ok = number(kv_heads);
    } else if (a == "--head-dim") {
      ok = number(head_dim);
    } else if (a == "--page-size") {
      ok = number(page_size);
    } else if (a == "--layers") {
      ok = number(layers_flag);
    } else if (a == "--context") {
      contexts = ParseList(v);
      ++i;
      ok = !contexts.empty();
    } else if (a == "--kv-dtype") {
      const auto d = runtime::ParseDType(v, {runtime::DType::kF32, runtime::DType::kBF16});
      ++i;
      if (!d.ok()) {
        std::fprintf(stderr, "--kv-dtype: %s\n", std::string(d.status().message()).c_str());
        return 2;
      }
      kv_dtype = *d;
    } else {
      ok = false;
    }
    if (!ok || heads % kv_heads != 0 || page_size % kernels::kPageAlign != 0 ||
        head_dim > kernels::kMaxHeadDim) {
      std::fprintf(stderr,
                   "usage: attention_bench [--threads N] [--seqs S] [--context 128,512] "
                   "[--heads H] [--kv-heads KV (divides H)] [--head-dim D (<= %d)] "
                   "[--page-size P (a multiple of %d)] [--kv-dtype f32|bf16] [--layers L]\n",
                   kernels::kMaxHeadDim, kernels::kPageAlign);
      return 2;
    }
  }
  const kernels::AttentionShape shape{heads, kv_heads, head_dim, page_size,
                                      kv_dtype == runtime::DType::kBF16 ? kernels::KvType::kBF16
                                                                        : kernels::KvType::kF32};
  const size_t kv_dim = static_cast<size_t>(kv_heads) * head_dim;
  const size_t es = kernels::KvTypeSize(shape.kv);
  const size_t page_bytes = kv_dim * page_size * es;  // one K (or V) page

  runtime::CpuDevice cpu(threads);
  const double bw = MeasureReadBandwidth(cpu.pool(), size_t{1} << 30, 5);
  std::printf("attention_bench: %s; read bandwidth %.1f GB/s; %d sequences, %d heads (%d kv) of "
              "%d, pages of %d, %s K/V\n",
              cpu.name().c_str(), bw, seqs, heads, kv_heads, head_dim, page_size,
              runtime::DTypeName(kv_dtype));
  nlohmann::json out = {{"bandwidth_gbs", bw},   {"threads", threads},  {"seqs", seqs},
                        {"heads", heads},        {"kv_heads", kv_heads}, {"head_dim", head_dim},
                        {"page_size", page_size}, {"kv_dtype", runtime::DTypeName(kv_dtype)}};
  std::mt19937 rng(7);
  for (int context : contexts) {
    const int pages_per_seq = (context + page_size - 1) / page_size;
    const size_t layer_bytes = 2 * page_bytes * pages_per_seq * seqs;
    const int layers = layers_flag > 0 ? layers_flag
                                       : static_cast<int>(std::max<size_t>(
                                             2, (size_t{512} << 20) / std::max<size_t>(1, layer_bytes)));
    // One arena of pages (K then V in each) for every layer, handed out in a shuffled order.
    const size_t n_pages = static_cast<size_t>(pages_per_seq) * seqs * layers;
    const size_t pool_bytes = n_pages * 2 * page_bytes;
    std::shared_ptr<void> pool = runtime::AllocateAligned(pool_bytes, /*zeroed=*/false);
    auto* base = static_cast<uint8_t*>(pool.get());
    // Ordinary small values (never denormals, which would time the FPU's slow path).
    if (es == 4) {
      std::fill_n(reinterpret_cast<float*>(base), pool_bytes / 4, 0.01f);
    } else {
      std::fill_n(reinterpret_cast<uint16_t*>(base), pool_bytes / 2, uint16_t{0x3c24});
    }
    std::vector<int32_t> order(n_pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    // tables[layer][seq]: that sequence's page ids in the arena.
    std::vector<std::vector<kernels::PageTable>> tables(layers);
    for (int l = 0; l < layers; ++l) {
      for (int s = 0; s < seqs; ++s) {
        const int32_t* ids = order.data() + (static_cast<size_t>(l) * seqs + s) * pages_per_seq;
        tables[l].push_back({base, 2 * page_bytes, page_bytes, ids});
      }
    }
    std::vector<float> q(static_cast<size_t>(seqs) * heads * head_dim, 0.01f);
    std::vector<float> att(q.size());
    const int lds = (context + kernels::kPageAlign - 1) / kernels::kPageAlign * kernels::kPageAlign;
    auto step = [&](int l) {
      cpu.pool().Run(seqs, [&](int s) {
        thread_local std::vector<float> scores;
        scores.resize(lds);
        const size_t off = static_cast<size_t>(s) * heads * head_dim;
        kernels::AttendOne(q.data() + off, tables[l][s], context,
                           shape, 0, heads, scores.data(), att.data() + off);
      });
    };
    for (int l = 0; l < layers; ++l) step(l);  // first touch
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      const double t0 = Now();
      for (int l = 0; l < layers; ++l) step(l);
      best = std::min(best, (Now() - t0) / layers);
    }
    const double kv_bytes = 2.0 * static_cast<double>(kv_dim) * es * context * seqs;
    const double gbs = kv_bytes / best / 1e9;
    std::printf("  context %5d: %8.3f ms per layer-step, %6.1f GB/s of K/V (%5.1f%% of read "
                "bandwidth; %d layers, %.0f MiB of pages)\n",
                context, best * 1e3, gbs, 100 * gbs / bw, layers,
                pool_bytes / 1048576.0);
    out["context"][std::to_string(context)] = {{"ms", best * 1e3}, {"gbs", gbs}, {"bw_pct", 100 * gbs / bw}};
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
