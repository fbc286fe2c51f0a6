#include "server/grpc_request.h"

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "server/request_limits.h"

namespace blockserve::server {

absl::StatusOr<GenerateParams> ParamsFromProto(const v1::GenerateRequest& r) {
  GenerateParams p;
  p.model = r.model();
  if (r.prompt_case() == v1::GenerateRequest::kText) {
    p.text = r.text();
    p.add_bos = true;
  } else if (r.prompt_case() == v1::GenerateRequest::kTokenIds) {
    p.token_ids.assign(r.token_ids().ids().begin(), r.token_ids().ids().end());
  } else {
    return absl::InvalidArgumentError("GenerateRequest: set prompt (text or token_ids)");
  }
  if (r.max_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GenerateRequest.max_tokens must be at least 1; got ", r.max_tokens()));
  }
  p.max_tokens = r.max_tokens();
  p.sampling.temperature = r.sampling().temperature();
  p.sampling.top_p = r.sampling().top_p() == 0 ? 1.0f : r.sampling().top_p();
  p.sampling.top_k = r.sampling().top_k();
  p.sampling.seed = r.sampling().seed();
  p.sampling.frequency_penalty = r.sampling().frequency_penalty();
  p.sampling.presence_penalty = r.sampling().presence_penalty();
  for (const auto& [token, bias] : r.sampling().logit_bias()) p.sampling.logit_bias.push_back({token, bias});
  if (r.sampling().repetition_penalty() != 0) p.sampling.repetition_penalty = r.sampling().repetition_penalty();
  p.sampling.min_tokens = r.sampling().min_tokens();
  p.ignore_eos = r.ignore_eos();
  p.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  p.json_object = r.json_object();
  p.guided_choice.assign(r.guided_choice().begin(), r.guided_choice().end());
  if (p.json_object && !p.guided_choice.empty()) {
    return absl::InvalidArgumentError("GenerateRequest: json_object or guided_choice, not both");
  }
  for (const std::string& c : p.guided_choice) {
    if (c.empty()) return absl::InvalidArgumentError("GenerateRequest.guided_choice: an empty choice");
  }
  p.stop.assign(r.stop().begin(), r.stop().end());
  if (r.priority() != 0) p.priority = r.priority();
  if (r.top_logprobs() != 0 && !r.logprobs() && !r.prompt_logprobs()) {
    return absl::InvalidArgumentError(
        "GenerateRequest.top_logprobs needs logprobs or prompt_logprobs set");
  }
  if (r.top_logprobs() < 0 || r.top_logprobs() > runtime::kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("GenerateRequest.top_logprobs must be in [0, ",
                                                   runtime::kMaxLogprobs, "]; got ", r.top_logprobs()));
  }
  if (r.logprobs()) p.sampling.logprobs = r.top_logprobs();
  if (r.prompt_logprobs()) p.prompt_logprobs = r.top_logprobs();
  return p;
}

}  // namespace blockserve::server
