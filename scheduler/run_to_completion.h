// Requests run to completion through the engine on the calling thread: how the `generate`
// command, the benches and the tests drive the one executor the server uses (there is no second
// generation loop).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/chain.h"
#include "scheduler/engine.h"

namespace blockserve::scheduler {

struct Completion {
  std::vector<int32_t> tokens;  // generated ids (a stop token excluded)
  Finish finish = Finish::kNone;
  std::string error;            // with kError
};

// One engine model over a built chain's (resident) blocks, its spans tagged with `adapter`.
EngineModel ChainModel(std::string name, const runtime::Chain& chain, int32_t adapter = 0);

// Called for each generated token: (index of the spec, token id).
using TokenCallback = std::function<void(int, int32_t)>;

// Submits every spec to `engine` (not Start()ed) and steps it until all have finished. A spec
// the engine refuses is an error naming its index; a failed step is returned as is.
absl::StatusOr<std::vector<Completion>> RunToCompletion(Engine& engine,
                                                        const std::vector<RequestSpec>& specs,
                                                        const TokenCallback& on_token = nullptr);

}  // namespace blockserve::scheduler
