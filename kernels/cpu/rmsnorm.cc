#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <cstddef>

namespace blockserve::kernels {

void RmsNorm(const float* x, const float* weight, int n_rows, int dim, float eps, float* out) {
  for (int r = 0; r < n_rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* o = out + static_cast<size_t>(r) * dim;
    float ss = 0.0f;
    for (int j = 0; j < dim; ++j) ss += xr[j] * xr[j];
    ss /= static_cast<float>(dim);
    ss += eps;
    ss = 1.0f / std::sqrt(ss);
    for (int j = 0; j < dim; ++j) o[j] = weight[j] * (ss * xr[j]);
  }
}

}  // namespace blockserve::kernels
