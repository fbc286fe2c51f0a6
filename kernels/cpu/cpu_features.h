// CPU capabilities, detected once.
#pragma once

namespace blockserve::kernels {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
};

const CpuFeatures& GetCpuFeatures();

}  // namespace blockserve::kernels
