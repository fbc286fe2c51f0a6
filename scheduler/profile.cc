#include "scheduler/profile.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace blockserve::scheduler {

int MeasureMaxBatch(runtime::Block& block, int dim, runtime::ExecContext& ctx, int max_tokens,
                    double fraction) {
  constexpr runtime::SeqId kProbe = runtime::SeqId{1} << 50;  // never a request's id
  std::vector<std::pair<int, double>> rates;
  const int32_t token = 0;
  for (int b = 1; b <= max_tokens; b *= 2) {
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      runtime::Batch batch;
      for (int j = 0; j < b; ++j) {
        batch.Add(kProbe + j, 0, &token, 1, runtime::SeqSpan::Logits::kLast);
      }
      batch.hidden.assign(static_cast<size_t>(b) * dim, 0.01f);
      const auto t0 = std::chrono::steady_clock::now();
      const bool ok = block.Forward(batch, ctx).ok();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (int j = 0; j < b; ++j) block.ReleaseSequence(kProbe + j);
      if (!ok) return std::max(1, b / 2);
      best = std::max(best, b / std::max(secs, 1e-9));
    }
    rates.emplace_back(b, best);
  }
  double top = 0;
  for (const auto& [b, r] : rates) top = std::max(top, r);
  for (const auto& [b, r] : rates) {
    if (r >= fraction * top) return b;
  }
  return max_tokens;
}

}  // namespace blockserve::scheduler
