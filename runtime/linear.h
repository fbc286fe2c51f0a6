// A weight matrix packed for kernels::MatmulPanels, possibly fusing several matrices that share
// their input (Q|K|V, gate|up) into one, so one pass over the activations feeds all of them.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/matmul.h"
#include "runtime/tensor.h"
#include "runtime/thread_pool.h"

namespace blockserve::runtime {

class PackedLinear {
 public:
  PackedLinear() = default;
  // Packs the rows of `parts` (each [rows_i][k], same k and dtype) one after another.
  // `storage`: the dtype to keep the weights in (kF32, kF16 or kBF16); the input is converted.
  static absl::StatusOr<PackedLinear> Pack(const std::vector<const Tensor*>& parts,
                                           DType storage);

  int out_features() const { return matrix_.n; }
  int in_features() const { return matrix_.k; }
  size_t bytes() const { return kernels::PackedBytes(matrix_.type, matrix_.n, matrix_.k); }

  // y[m][out_features] = x[m][in_features] . W^T, spread over `pool`.
  void Forward(ThreadPool& pool, const float* x, int m, float* y) const;

 private:
  std::shared_ptr<void> storage_;
  kernels::PackedMatrix matrix_;
};

}  // namespace blockserve::runtime
