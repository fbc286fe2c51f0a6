#include "scheduler/request.h"

#include "absl/strings/str_cat.h"

namespace blockserve::scheduler {

const char* RequestStateName(RequestState s) {
  switch (s) {
    case RequestState::kQueued:
      return "queued";
    case RequestState::kRunning:
      return "running";
    case RequestState::kPreempted:
      return "preempted";
    case RequestState::kFinished:
      return "finished";
  }
  return "?";
}

const char* FinishName(Finish f) {
  switch (f) {
    case Finish::kNone:
      return "none";
    case Finish::kStop:
      return "stop";
    case Finish::kLength:
      return "length";
    case Finish::kAbort:
      return "abort";
    case Finish::kError:
      return "error";
    case Finish::kContextFull:
      return "context_full";
  }
  return "?";
}

const char* FinishReason(Finish f) {
  switch (f) {
    case Finish::kNone: return "";
    case Finish::kContextFull: return "length";
    default: return FinishName(f);
  }
}

absl::Status Request::TransitionTo(RequestState next) {
  const RequestState s = state;
  const bool ok = (s == RequestState::kQueued && next == RequestState::kRunning) ||
                  (s == RequestState::kRunning && next == RequestState::kPreempted) ||
                  (s == RequestState::kPreempted && next == RequestState::kRunning) ||
                  (s != RequestState::kFinished && next == RequestState::kFinished);
  if (!ok) {
    return absl::InternalError(absl::StrCat("request ", id, ": illegal transition ",
                                            RequestStateName(s), " -> ", RequestStateName(next)));
  }
  state = next;
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
