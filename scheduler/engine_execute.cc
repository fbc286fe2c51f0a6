// Engine, execution: a StepPlan turned into the executor's self-contained input (each span's
// tokens, positions, adapter, scoring and sampling, the calls' instances), requests of models
// whose blocks failed to load taken out of every call, and the executor's result folded back
// (prompt log-probabilities gathered, call statistics).
#include "scheduler/engine.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "spdlog/spdlog.h"

namespace blockserve::scheduler {

ExecInput Engine::BuildInput(const StepPlan& plan) {
  ExecInput in;
  // The plan's donations and releases the engine has run already (Execute, before loading).
  in.forks = plan.forks;
  in.start = std::move(pending_start_);
  pending_start_.clear();
  in.end = std::move(pending_end_);
  pending_end_.clear();
  in.rounds = plan.rounds;
  in.spans.reserve(plan.seqs.size());
  for (const PlannedSeq& s : plan.seqs) {
    const Request* r = scheduler_->Find(s.id);
    const runtime::ModelConfig& config = models_[s.model].config;
    ExecSpan& e = in.spans.emplace_back();
    e.seq = s.id;
    e.pos = s.pos;
    e.len = s.len;
    e.adapter = models_[s.model].adapter;
    e.dim = config.dim;
    e.vocab = config.vocab_size;
    e.sample = s.sample;
    e.tokens.resize(s.len);
    for (int i = 0; i < s.len; ++i) e.tokens[i] = r->TokenAt(s.pos + i);
    // Position p's logits give prompt token p + 1's log-probability; those already gathered (a
    // recomputation after preemption) are not wanted again.
    auto lps = prompt_lps_.find(s.id);
    if (lps == prompt_lps_.end() || lps->second.delivered) continue;
    const int prompt = static_cast<int>(r->spec.prompt.size());
    e.score_begin = std::max(s.pos, static_cast<int>(lps->second.got.size()));
    e.score_end = std::max(e.score_begin, std::min(s.pos + s.len, prompt - 1));
    for (int p = e.score_begin; p < e.score_end; ++p) e.score_targets.push_back(r->spec.prompt[p + 1]);
    e.score_top = r->spec.prompt_logprobs;
  }
  return in;
}

// Requests of models with a block that failed to load leave every call (the calls at that
// block had only them) and fail; the other tenants' requests run as planned.
StepPlan Engine::WithoutBroken(const StepPlan& full, const std::vector<absl::Status>& broken,
                               std::map<RequestId, std::string>* failed) const {
  StepPlan plan = full;
  plan.forks.clear();
  for (const Fork& f : full.forks) {
    if (broken[f.model].ok()) plan.forks.push_back(f);
  }
  for (const PlannedSeq& s : full.seqs) {
    if (broken[s.model].ok() || failed->count(s.id)) continue;
    // The log gets the file and the reason; the client a message without server paths.
    spdlog::error("request {} fails: {}", s.id, std::string(broken[s.model].message()));
    (*failed)[s.id] = absl::StrCat("model ", scheduler_->models()[s.model].name,
                                   " is unavailable: one of its blocks failed to load");
  }
  for (auto& calls : plan.rounds) {
    for (BlockCall& c : calls) {
      std::erase_if(c.members, [&](int m) { return !broken[full.seqs[m].model].ok(); });
    }
    std::erase_if(calls, [](const BlockCall& c) { return c.members.empty(); });
  }
  return plan;
}

absl::Status Engine::Execute(const StepPlan& full, std::vector<StepOutput>* out,
                             std::map<RequestId, std::string>* failed) {
  // KV of finished requests goes before anything loads (it may make room).
  for (const Fork& f : full.donate) RETURN_IF_ERROR(executor_->Fork(f));
  for (const Release& r : full.release) executor_->Release(r);
  std::vector<absl::Status> broken;
  const uint64_t step = StepNumber();
  RETURN_IF_ERROR(residency_->MakeResident(full, step, &broken));
  // Loads for requests still waiting land while this step computes.
  residency_->StartLoads(full, step);
  ASSIGN_OR_RETURN(ExecResult result,
                   executor_->Run(BuildInput(broken.empty() ? full : WithoutBroken(full, broken, failed))));
  for (ExecResult::Scored& row : result.scored) {  // a span's rows come in order of position
    auto it = prompt_lps_.find(row.seq);
    if (it != prompt_lps_.end() && !it->second.delivered &&
        row.pos == static_cast<int>(it->second.got.size())) {
      it->second.got.push_back(std::move(row.logprobs));
    }
  }
  for (StepOutput& o : result.out) {
    auto it = prompt_lps_.find(o.id);
    if (it != prompt_lps_.end() && !it->second.delivered) {
      o.prompt_logprobs = std::move(it->second.got);
      it->second.delivered = true;
    }
    out->push_back(std::move(o));
  }
  absl::MutexLock lock(&mu_);
  for (const ExecResult::Call& c : result.calls) {
    ++stats_.block_calls;
    stats_.busy_s += c.secs;
    InstanceStats& st = stats_.instances[c.instance];
    ++st.calls;
    st.tokens += c.tokens;
    st.last_batch = c.tokens;
    st.busy_s += c.secs;
  }
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
