#include "scheduler/run_to_completion.h"

#include "absl/strings/str_cat.h"

namespace blockserve::scheduler {

EngineModel ChainModel(std::string name, const runtime::Chain& chain, int32_t adapter) {
  EngineModel m;
  m.name = std::move(name);
  m.config = chain.config();
  m.chain = ResidentSlots(chain.blocks());
  m.adapter = adapter;
  return m;
}

absl::StatusOr<std::vector<Completion>> RunToCompletion(Engine& engine,
                                                        const std::vector<RequestSpec>& specs,
                                                        const TokenCallback& on_token) {
  auto refused = [](size_t i, const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("request ", i, ": ", s.message()));
  };
  for (size_t i = 0; i < specs.size(); ++i) {  // all or none submitted
    if (auto s = engine.scheduler().Validate(specs[i]); !s.ok()) return refused(i, s);
  }
  std::vector<Completion> out(specs.size());
  size_t finished = 0;
  std::vector<RequestId> ids;
  // The sinks point here: no request may outlive this call, whatever happens.
  auto drain = [&] {
    for (RequestId id : ids) engine.Abort(id);
    for (int step = 0; finished < ids.size() && step < 1000; ++step) {
      auto worked = engine.Step();
      if (!worked.ok() || !*worked) break;
    }
  };
  absl::Status status;
  for (size_t i = 0; i < specs.size() && status.ok(); ++i) {
    auto id = engine.Submit(specs[i], [&out, &finished, &on_token, i](const Event& e) {
      Completion& c = out[i];
      if (e.token >= 0) {
        c.tokens.push_back(e.token);
        if (on_token) on_token(static_cast<int>(i), e.token);
      }
      if (e.finish != Finish::kNone) {
        c.finish = e.finish;
        c.error = e.error;
        ++finished;
      }
    });
    if (id.ok()) {
      ids.push_back(*id);
    } else {
      status = refused(i, id.status());
    }
  }
  while (status.ok() && finished < specs.size()) {
    auto worked = engine.Step();
    if (!worked.ok()) {
      status = worked.status();
    } else if (!*worked && finished < specs.size()) {
      status = absl::InternalError("the engine went idle with requests unfinished");
    }
  }
  if (!status.ok()) {
    drain();
    return status;
  }
  return out;
}

}  // namespace blockserve::scheduler
