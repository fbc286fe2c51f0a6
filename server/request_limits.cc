#include "server/request_limits.h"

#include "absl/strings/str_cat.h"
#include "server/serving.h"

namespace blockserve::server {

namespace {

absl::Status TooMany(const char* field, size_t limit, size_t got, const char* what) {
  return absl::InvalidArgumentError(
      absl::StrCat("'", field, "' takes at most ", limit, " ", what, "; got ", got, "."));
}

}  // namespace

absl::Status CheckRequestLimits(const GenerateParams& p) {
  if (p.model.size() > kMaxModelNameBytes) {
    return TooMany("model", kMaxModelNameBytes, p.model.size(), "bytes");
  }
  if (p.stop.size() > kMaxStopStrings) return TooMany("stop", kMaxStopStrings, p.stop.size(), "strings");
  for (const std::string& s : p.stop) {
    if (s.size() > kMaxStopStringBytes) {
      return TooMany("stop", kMaxStopStringBytes, s.size(), "bytes per string");
    }
  }
  if (p.stop_token_ids.size() > kMaxStopTokenIds) {
    return TooMany("stop_token_ids", kMaxStopTokenIds, p.stop_token_ids.size(), "token ids");
  }
  if (p.sampling.logit_bias.size() > kMaxLogitBias) {
    return TooMany("logit_bias", kMaxLogitBias, p.sampling.logit_bias.size(), "entries");
  }
  if (p.guided_choice.size() > kMaxGuidedChoices) {
    return TooMany("guided_choice", kMaxGuidedChoices, p.guided_choice.size(), "choices");
  }
  size_t choice_bytes = 0;
  for (const std::string& c : p.guided_choice) choice_bytes += c.size();
  if (choice_bytes > kMaxGuidedChoiceBytes) {
    return TooMany("guided_choice", kMaxGuidedChoiceBytes, choice_bytes, "bytes in all");
  }
  return absl::OkStatus();
}

}  // namespace blockserve::server
