// Measured per-block batch limits: a block's throughput grows with the batch until it is
// compute-bound; beyond that, a bigger batch only adds latency to every sequence in it.
#pragma once

#include "runtime/block.h"

namespace blockserve::scheduler {

// Times `block` on decode-shaped batches of 1, 2, 4, ... `max_tokens` tokens (hidden states of
// `dim` floats) and returns the smallest batch whose tokens/s reach `fraction` of the best.
// Temporary sequences are released; the block is otherwise untouched.
int MeasureMaxBatch(runtime::Block& block, int dim, runtime::ExecContext& ctx,
                    int max_tokens = 512, double fraction = 0.95);

}  // namespace blockserve::scheduler
