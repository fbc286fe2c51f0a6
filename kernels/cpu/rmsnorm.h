#pragma once

namespace blockserve::kernels {

// out[r][:] = weight * x[r][:] / sqrt(mean(x[r]^2) + eps) for rows r < n_rows; x: [n_rows][dim].
// out may alias x.
void RmsNorm(const float* x, const float* weight, int n_rows, int dim, float eps, float* out);

}  // namespace blockserve::kernels
