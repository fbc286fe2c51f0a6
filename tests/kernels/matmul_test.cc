// Packed matmul against a double-precision reference, for every weight type and awkward shape;
// every ISA path gives bit-identical results, and a row's result never depends on its batch.
#include <cmath>
#include <cstring>
#include <tuple>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/half.h"
#include "runtime/tensor.h"
#include "tests/testing/test_util.h"

namespace blockserve::kernels {
namespace {

using blockserve::testing::RandomVector;

struct Packed {
  std::shared_ptr<void> buf;
  PackedMatrix m;
  std::vector<double> w_as_double;  // the weights after rounding to the storage type
};

Packed MakePacked(WeightType type, int n, int k, uint32_t seed) {
  std::vector<float> w = RandomVector(static_cast<size_t>(n) * k, seed, 0.5f);
  Packed p;
  p.w_as_double.resize(w.size());
  std::vector<uint16_t> half(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    if (type == WeightType::kF16) {
      half[i] = FloatToHalf(w[i]);
      p.w_as_double[i] = HalfToFloat(half[i]);
    } else if (type == WeightType::kBF16) {
      half[i] = FloatToBF16(w[i]);
      p.w_as_double[i] = BF16ToFloat(half[i]);
    } else {
      p.w_as_double[i] = w[i];
    }
  }
  p.buf = runtime::AllocateAligned(PackedBytes(type, n, k));
  PackRows(type == WeightType::kF32 ? static_cast<const void*>(w.data()) : half.data(), type, n,
           k, 0, p.buf.get());
  p.m = {p.buf.get(), type, n, k};
  return p;
}

class MatmulTest : public ::testing::TestWithParam<std::tuple<WeightType, int, int, int>> {};

TEST_P(MatmulTest, MatchesDoubleReference) {
  const auto [type, m, n, k] = GetParam();
  Packed p = MakePacked(type, n, k, 42 + n + k);
  std::vector<float> x = RandomVector(static_cast<size_t>(m) * k, 7 + m);
  std::vector<float> y(static_cast<size_t>(m) * n, -1.0f);
  MatmulPanels(x.data(), m, k, p.m, 0, NumPanels(n), y.data(), n);
  for (int r = 0; r < m; ++r) {
    for (int c = 0; c < n; ++c) {
      double ref = 0, mag = 0;
      for (int i = 0; i < k; ++i) {
        ref += static_cast<double>(x[r * k + i]) * p.w_as_double[static_cast<size_t>(c) * k + i];
        mag += std::fabs(x[r * k + i] * p.w_as_double[static_cast<size_t>(c) * k + i]);
      }
      // f32 accumulation over k terms: error grows ~ sqrt(k) * eps * magnitude.
      ASSERT_NEAR(y[r * n + c], ref, 1e-6 * mag + 1e-6 * std::sqrt(k) * mag + 1e-6)
          << "row " << r << " col " << c;
    }
  }
}

TEST_P(MatmulTest, EveryIsaAndBatchSizeIsBitIdentical) {
  const auto [type, m, n, k] = GetParam();
  Packed p = MakePacked(type, n, k, 3 + n);
  std::vector<float> x = RandomVector(static_cast<size_t>(m) * k, 11 + k);
  std::vector<float> want(static_cast<size_t>(m) * n);
  internal::MatmulPanelsGeneric(x.data(), m, k, p.m, 0, NumPanels(n), want.data(), n);
  std::vector<internal::MatmulFn> impls;
  const CpuFeatures& f = GetCpuFeatures();
  if (f.avx2 && f.fma && f.f16c) impls.push_back(internal::MatmulPanelsAvx2);
  if (f.avx512f && f.avx512bw && f.avx512vl) impls.push_back(internal::MatmulPanelsAvx512);
  for (auto impl : impls) {
    std::vector<float> got(want.size());
    impl(x.data(), m, k, p.m, 0, NumPanels(n), got.data(), n);
    ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4));
  }
  // Each row alone (batch of one) equals the same row computed inside the batch.
  for (int r = 0; r < m; ++r) {
    std::vector<float> one(n);
    MatmulPanels(x.data() + static_cast<size_t>(r) * k, 1, k, p.m, 0, NumPanels(n), one.data(), n);
    ASSERT_EQ(0, std::memcmp(one.data(), want.data() + static_cast<size_t>(r) * n, n * 4)) << r;
  }
}

TEST(MatmulPanels, SplitsByPanelRangeWithoutTouchingOthers) {
  Packed p = MakePacked(WeightType::kF32, 100, 40, 5);
  std::vector<float> x = RandomVector(3 * 40, 9);
  std::vector<float> full(3 * 100), parts(3 * 100, 123.0f);
  MatmulPanels(x.data(), 3, 40, p.m, 0, NumPanels(100), full.data(), 100);
  MatmulPanels(x.data(), 3, 40, p.m, 0, 2, parts.data(), 100);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(parts[r * 100 + 64], 123.0f);  // panel 2 untouched
  MatmulPanels(x.data(), 3, 40, p.m, 2, NumPanels(100), parts.data(), 100);
  EXPECT_EQ(0, std::memcmp(full.data(), parts.data(), full.size() * 4));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulTest,
    ::testing::Combine(::testing::Values(WeightType::kF32, WeightType::kF16, WeightType::kBF16),
                       ::testing::Values(1, 5, 12, 13, 40),        // m
                       ::testing::Values(1, 31, 33, 96),           // n
                       ::testing::Values(1, 64, 129, 300)));       // k

}  // namespace
}  // namespace blockserve::kernels
