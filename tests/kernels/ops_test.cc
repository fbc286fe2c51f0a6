#include <algorithm>
// Every non-matmul kernel against a plain double-precision reference.
#include <cmath>

#include "kernels/cpu/activations.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_internal.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/half.h"
#include "tests/testing/test_util.h"

namespace blockserve::kernels {
namespace {

using blockserve::testing::RandomVector;

TEST(RmsNorm, MatchesReference) {
  const int rows = 3, dim = 67;
  auto x = RandomVector(rows * dim, 1);
  auto w = RandomVector(dim, 2);
  std::vector<float> out(rows * dim);
  RmsNorm(x.data(), w.data(), rows, dim, 1e-5f, out.data());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int j = 0; j < dim; ++j) ss += double(x[r * dim + j]) * x[r * dim + j];
    const double scale = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int j = 0; j < dim; ++j) {
      EXPECT_NEAR(out[r * dim + j], w[j] * x[r * dim + j] * scale, 1e-5);
    }
  }
}

TEST(Rope, BothConventionsMatchReference) {
  const int heads = 3, hd = 16, pos = 37;
  const float theta = 10000.0f;
  std::vector<float> c(hd / 2), s(hd / 2);
  RopeAngles(pos, hd, theta, c.data(), s.data());
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kRotateHalf}) {
    auto x = RandomVector(heads * hd, 3);
    auto y = x;
    ApplyRope(style, y.data(), heads, hd, c.data(), s.data());
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < hd / 2; ++i) {
        const double ang = pos * std::pow(double(theta), -2.0 * i / hd);
        const int a = style == RopeStyle::kInterleaved ? 2 * i : i;
        const int b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + hd / 2;
        const double x0 = x[h * hd + a], x1 = x[h * hd + b];
        EXPECT_NEAR(y[h * hd + a], x0 * std::cos(ang) - x1 * std::sin(ang), 2e-5);
        EXPECT_NEAR(y[h * hd + b], x0 * std::sin(ang) + x1 * std::cos(ang), 2e-5);
      }
    }
  }
}

TEST(SwiGlu, MatchesReference) {
  auto g = RandomVector(50, 4, 3.0f), u = RandomVector(50, 5);
  std::vector<float> out(50);
  SwiGlu(g.data(), u.data(), 50, out.data());
  for (int i = 0; i < 50; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
    EXPECT_NEAR(out[i], ref, 1e-5 * (1 + std::fabs(ref)));
  }
}

TEST(Softmax, MatchesReferenceAndIsStableForLargeInputs) {
  auto x = RandomVector(40, 6, 20.0f);
  x[3] = 1e4f;  // would overflow exp without the max subtraction
  auto y = x;
  Softmax(y.data(), 40);
  double mx = *std::max_element(x.begin(), x.end()), sum = 0;
  for (float v : x) sum += std::exp(v - mx);
  for (int i = 0; i < 40; ++i) EXPECT_NEAR(y[i], std::exp(x[i] - mx) / sum, 1e-6);
}

TEST(LogSumExp, MatchesADoubleReferenceAtVocabularySizes) {
  for (int n : {1, 15, 16, 17, 512, 32000, 128256}) {
    auto x = RandomVector(n, 7 + n, 12.0f);
    if (n > 3) x[3] = 1e4f;  // would overflow exp without the max subtraction
    double mx = *std::max_element(x.begin(), x.end()), sum = 0;
    for (float v : x) sum += std::exp(double(v) - mx);
    EXPECT_NEAR(LogSumExp(x.data(), n), mx + std::log(sum), 1e-6 * (1 + std::fabs(mx))) << n;
  }
  std::vector<float> masked = {-INFINITY, 0.5f, -INFINITY};
  EXPECT_NEAR(LogSumExp(masked.data(), 3), 0.5f, 1e-7);
  EXPECT_EQ(LogSumExp(masked.data(), 0), -INFINITY);
}

// Pages of one sequence's K and V in either element type, placed in memory in the order given.
struct PagedKv {
  PagedKv(const AttentionShape& s, int n_ctx, bool reversed) {
    const int kv_dim = s.n_kv_heads * s.head_dim;
    const int n_pages = (n_ctx + s.page_size - 1) / s.page_size;
    const size_t half = static_cast<size_t>(s.page_size) * kv_dim * KvTypeSize(s.kv);
    arena.resize(n_pages * 2 * half);
    for (int p = 0; p < n_pages; ++p) ids.push_back(reversed ? n_pages - 1 - p : p);
    table = {arena.data(), 2 * half, half, ids.data()};
    for (int p = 0; p < n_pages; ++p) {
      kp.push_back(table.k(p));
      vp.push_back(table.v(p));
    }
  }
  // Stores logical rows k, v ([n][kv_dim]) one token at a time.
  void Store(const AttentionShape& s, const std::vector<float>& k, const std::vector<float>& v,
             int n) {
    const int kv_dim = s.n_kv_heads * s.head_dim;
    for (int t = 0; t < n; ++t) {
      StoreKvRows(k.data() + t * kv_dim, 0, v.data() + t * kv_dim, 0, 1, s, t % s.page_size,
                  const_cast<void*>(kp[t / s.page_size]), const_cast<void*>(vp[t / s.page_size]));
    }
  }
  std::vector<uint8_t> arena;
  std::vector<int32_t> ids;
  PageTable table;
  std::vector<const void*> kp, vp;  // the pages' addresses
};

// What a value reads back as from a KV cache of type t.
float KvRounded(KvType t, float x) {
  return t == KvType::kF32 ? x : BF16ToFloat(FloatToBF16(x));
}

TEST(Attention, PagedGqaMatchesReference) {
  for (KvType kv : {KvType::kF32, KvType::kBF16}) {
  for (int head_dim : {8, 32}) {
  AttentionShape s{8, 2, head_dim, 16, kv};  // 8 query heads share 2 kv heads; pages of 16 tokens
  const int kv_dim = s.n_kv_heads * s.head_dim, n_ctx = 37;
  const int n_pages = (n_ctx + s.page_size - 1) / s.page_size;
  // Logical K/V rows, stored one token at a time into pages placed out of order in memory.
  auto krows = RandomVector(n_ctx * kv_dim, 7);
  auto vrows = RandomVector(n_ctx * kv_dim, 8);
  PagedKv paged(s, n_ctx, /*reversed=*/true);
  paged.Store(s, krows, vrows, n_ctx);
  // The reference reads what the cache holds (bf16: K and V rounded to nearest-even).
  for (float& x : krows) x = KvRounded(kv, x);
  for (float& x : vrows) x = KvRounded(kv, x);
  auto q = RandomVector(s.n_heads * s.head_dim, 9);
  std::vector<float> out(s.n_heads * s.head_dim), scores(n_pages * s.page_size);
  AttendOne(q.data(), paged.table, n_ctx, s, 0, s.n_heads, scores.data(),
            out.data());
  for (int h = 0; h < s.n_heads; ++h) {
    const int kvh = h / (s.n_heads / s.n_kv_heads);
    std::vector<double> sc(n_ctx);
    double mx = -1e300, sum = 0;
    for (int t = 0; t < n_ctx; ++t) {
      const float* k = krows.data() + t * kv_dim + kvh * s.head_dim;
      double d = 0;
      for (int i = 0; i < s.head_dim; ++i) d += double(q[h * s.head_dim + i]) * k[i];
      sc[t] = d / std::sqrt(double(s.head_dim));
      mx = std::max(mx, sc[t]);
    }
    for (auto& v : sc) sum += (v = std::exp(v - mx));
    for (int i = 0; i < s.head_dim; ++i) {
      double ref = 0;
      for (int t = 0; t < n_ctx; ++t) {
        ref += sc[t] / sum * vrows[t * kv_dim + kvh * s.head_dim + i];
      }
      EXPECT_NEAR(out[h * s.head_dim + i], ref, 1e-5)
          << "kv " << static_cast<int>(kv) << " head " << h << " dim " << i;
    }
  }
  }
  }
}

// A run of tokens stored in one call lands exactly where token-by-token stores put it.
TEST(Attention, StoreKvRowsEqualsOneTokenAtATime) {
  const AttentionShape s{4, 2, 32, 16};
  const int kv_dim = s.n_kv_heads * s.head_dim, ld = 3 * kv_dim;  // rows of a fused q|k|v
  auto rows = RandomVector(s.page_size * ld, 31);
  for (int slot = 0; slot < s.page_size; slot += 5) {
    const int n = std::min(7, s.page_size - slot);
    std::vector<float> k1(s.page_size * kv_dim, -1.0f), v1(k1), k2(k1), v2(k1);
    StoreKvRows(rows.data(), ld, rows.data() + kv_dim, ld, n, s, slot, k1.data(), v1.data());
    for (int r = 0; r < n; ++r) {
      StoreKvRows(rows.data() + r * ld, 0, rows.data() + r * ld + kv_dim, 0, 1, s, slot + r,
                  k2.data(), v2.data());
    }
    EXPECT_EQ(k1, k2) << "slot " << slot;
    EXPECT_EQ(v1, v2) << "slot " << slot;
    // Token r's key dimension d sits at d * page_size + slot + r.
    EXPECT_EQ(k1[5 * s.page_size + slot + n - 1], rows[(n - 1) * ld + 5]);
  }
}

// Prefill rows attended together give bit-identical results to one query at a time (batch and
// chunking invariance rest on it).
TEST(Attention, RowsTogetherEqualOneAtATimeBitForBit) {
  for (KvType kv : {KvType::kF32, KvType::kBF16}) {
  for (int head_dim : {8, 32, 64, 80, 128}) {
    AttentionShape s{4, 2, head_dim, head_dim == 80 ? 32 : 16, kv};
    const int kv_dim = s.n_kv_heads * s.head_dim, max_ctx = 70;
    const int n_pages = (max_ctx + s.page_size - 1) / s.page_size;
    PagedKv paged(s, max_ctx, /*reversed=*/false);
    paged.Store(s, RandomVector(max_ctx * kv_dim, 21), RandomVector(max_ctx * kv_dim, 22), max_ctx);
    const PageTable& table = paged.table;
    const int qd = s.n_heads * s.head_dim;
    auto q = RandomVector(kMaxAttendRows * qd, 23);
    const int lds = n_pages * s.page_size;
    for (int n0 = 1; n0 + kMaxAttendRows <= max_ctx; n0 += 3) {
      for (int rows = 1; rows <= kMaxAttendRows; ++rows) {
        std::vector<float> together(rows * qd), scores(rows * lds);
        AttendRows(q.data(), qd, rows, table, n0, s, 0, s.n_heads, scores.data(),
                   lds, together.data(), qd);
        for (int r = 0; r < rows; ++r) {
          std::vector<float> one(qd), sc(lds);
          AttendOne(q.data() + r * qd, table, n0 + r, s, 0, s.n_heads, sc.data(),
                    one.data());
          for (int i = 0; i < qd; ++i) {
            ASSERT_EQ(together[r * qd + i], one[i]) << "kv " << static_cast<int>(kv) << " hd "
                                                    << head_dim << " n0 " << n0 << " rows "
                                                    << rows << " r " << r;
          }
        }
      }
    }
  }
  }
}

// Every ISA build this CPU can run (the dispatcher picks one): the same results as the picked
// one within rounding, and rows together bit-identical to one at a time within each build.
TEST(Attention, EveryIsaBuildAgreesAndKeepsRowsBitIdentical) {
  struct Impl {
    const char* name;
    bool runs;
    decltype(&internal::AttendOneGeneric) one;
    decltype(&internal::AttendRowsGeneric) rows;
  };
  const CpuFeatures& f = GetCpuFeatures();
  const Impl impls[] = {
      {"avx512", f.avx512f && f.fma, internal::AttendOneAvx512, internal::AttendRowsAvx512},
      {"avx2", f.avx2 && f.fma, internal::AttendOneAvx2, internal::AttendRowsAvx2},
      {"generic", true, internal::AttendOneGeneric, internal::AttendRowsGeneric}};
  for (KvType kv : {KvType::kF32, KvType::kBF16}) {
    AttentionShape s{4, 2, 64, 16, kv};
    const int kv_dim = s.n_kv_heads * s.head_dim, n_ctx = 45, qd = s.n_heads * s.head_dim;
    PagedKv paged(s, n_ctx, /*reversed=*/true);
    paged.Store(s, RandomVector(n_ctx * kv_dim, 41), RandomVector(n_ctx * kv_dim, 42), n_ctx);
    auto q = RandomVector(kMaxAttendRows * qd, 43);
    const int lds = 48, n0 = n_ctx - kMaxAttendRows + 1;
    std::vector<float> picked(qd), sc(lds);
    AttendOne(q.data(), paged.table, n0, s, 0, s.n_heads, sc.data(),
              picked.data());
    for (const Impl& impl : impls) {
      if (!impl.runs) continue;
      std::vector<float> together(kMaxAttendRows * qd), scores(kMaxAttendRows * lds);
      impl.rows(q.data(), qd, kMaxAttendRows, paged.table, n0, s, 0,
                s.n_heads, scores.data(), lds, together.data(), qd);
      for (int r = 0; r < kMaxAttendRows; ++r) {
        std::vector<float> one(qd);
        impl.one(q.data() + r * qd, paged.table, n0 + r, s, 0, s.n_heads,
                 sc.data(), one.data());
        for (int i = 0; i < qd; ++i) {
          ASSERT_EQ(together[r * qd + i], one[i]) << impl.name << " row " << r;
          if (r == 0) {
            EXPECT_NEAR(one[i], picked[i], 1e-5) << impl.name;
          }
        }
      }
    }
  }
}

TEST(Embedding, LooksUpRowsOfEveryType) {
  const int vocab = 5, dim = 3;
  std::vector<float> table = RandomVector(vocab * dim, 10);
  std::vector<uint16_t> half(table.size()), bf(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    half[i] = FloatToHalf(table[i]);
    bf[i] = FloatToBF16(table[i]);
  }
  const int ids[] = {4, 0, 4};
  std::vector<float> out(3 * dim);
  EmbeddingLookup(WeightType::kF32, table.data(), dim, ids, 3, out.data());
  for (int j = 0; j < dim; ++j) EXPECT_EQ(out[j], table[4 * dim + j]);
  EmbeddingLookup(WeightType::kF16, half.data(), dim, ids, 3, out.data());
  for (int j = 0; j < dim; ++j) EXPECT_NEAR(out[dim + j], table[j], 2e-3);
  EmbeddingLookup(WeightType::kBF16, bf.data(), dim, ids, 3, out.data());
  for (int j = 0; j < dim; ++j) EXPECT_NEAR(out[2 * dim + j], table[4 * dim + j], 2e-2);
}

TEST(Half, RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf / nan
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  EXPECT_EQ(HalfToFloat(FloatToHalf(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(FloatToHalf(1e6f))));
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f)), 1.0f);
  EXPECT_NEAR(BF16ToFloat(FloatToBF16(3.14159f)), 3.14159f, 0.02f);
}

}  // namespace
}  // namespace blockserve::kernels
