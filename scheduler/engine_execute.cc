// Engine, execution: one StepPlan run round by round — the batched call per block instance
// (gather, Forward, scatter), the heads' logits and prompt log-probabilities, sampling, and the
// requests of models whose blocks failed to load taken out of every call.
#include "scheduler/engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "scheduler/profile.h"
#include "spdlog/spdlog.h"

namespace blockserve::scheduler {

using runtime::Batch;
using runtime::BlockKind;

bool Engine::PromptRowsWanted(const PlannedSeq& s, int* begin, int* end) const {
  auto it = prompt_lps_.find(s.id);
  if (it == prompt_lps_.end() || it->second.delivered) return false;
  const int prompt = static_cast<int>(scheduler_->Find(s.id)->spec.prompt.size());
  // Position p's logits give prompt token p + 1's log-probability; those already gathered (a
  // recomputation after preemption) are not wanted again.
  *begin = std::max(s.pos, static_cast<int>(it->second.got.size()));
  *end = std::min(s.pos + s.len, prompt - 1);
  return *begin < *end;
}

// One block call: gathers its members' rows into a batch, runs the block, scatters the rows
// back (or samples, at the head). Calls of one round touch disjoint members and, when run
// concurrently, distinct instances, so they share nothing they write.
absl::Status Engine::RunCall(const StepPlan& plan, const BlockCall& call, runtime::ExecContext& ctx,
                             const std::vector<std::vector<int32_t>>& tokens,
                             std::vector<std::vector<float>>& hidden, CallResult& result) {
  runtime::Block& block = *slots_[call.instance]->block;
  const bool head = block.kind() == BlockKind::kHead;
  Batch b;
  std::vector<int> sampled;         // members that sample, in order
  std::vector<size_t> sample_rows;  // their logit rows
  struct Scored {
    int member, begin, end;  // prompt positions [begin, end) to score
    size_t first_row;        // the logit row of the span's first token
  };
  std::vector<Scored> scored;
  size_t rows = 0;
  for (int m : call.members) {
    const PlannedSeq& s = plan.seqs[m];
    int begin = 0, end = 0;
    auto logits = runtime::SeqSpan::Logits::kNone;
    if (head && PromptRowsWanted(s, &begin, &end)) {  // every row: the prompt is scored
      logits = runtime::SeqSpan::Logits::kAll;
      scored.push_back({m, begin, end, rows});
      if (s.sample) {
        sampled.push_back(m);
        sample_rows.push_back(rows + s.len - 1);
      }
      rows += s.len;
    } else if (head && s.sample) {
      logits = runtime::SeqSpan::Logits::kLast;
      sampled.push_back(m);
      sample_rows.push_back(rows++);
    }
    b.Add(s.id, s.pos, tokens[m].data(), s.len, logits, models_[s.model].adapter);
    b.hidden.insert(b.hidden.end(), hidden[m].begin(), hidden[m].end());
  }
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(block.Forward(b, ctx));
  result.calls.push_back(
      {call.instance, b.num_tokens(),
       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
  if (head) {
    const size_t vocab = b.logits.size() / std::max<size_t>(1, rows);
    // Scored prompt rows: a pass over the vocabulary each, split across the pool.
    std::vector<std::pair<const Scored*, int>> jobs;  // (span, position)
    for (const Scored& sc : scored) {
      for (int p = sc.begin; p < sc.end; ++p) jobs.push_back({&sc, p});
    }
    const size_t first_row = result.prompt.size();
    result.prompt.resize(first_row + jobs.size());
    ctx.pool().ParallelFor(
        static_cast<int64_t>(jobs.size()),
        [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) {
            const auto [sc, p] = jobs[j];
            const PlannedSeq& s = plan.seqs[sc->member];
            const RequestSpec& spec = scheduler_->Find(s.id)->spec;
            const float* row = b.logits.data() + (sc->first_row + (p - s.pos)) * vocab;
            result.prompt[first_row + j] = {
                s.id, p,
                runtime::ComputeLogprobs(row, static_cast<int>(vocab), spec.prompt[p + 1],
                                         spec.prompt_logprobs)};
          }
        },
        /*min_per_part=*/4);
    // Every sequence has its own sampler (its own RNG): sampling splits across the pool.
    const size_t first = result.out.size();
    result.out.resize(first + sampled.size());
    std::vector<runtime::Sampler*> samplers(sampled.size());
    for (size_t i = 0; i < sampled.size(); ++i) {
      samplers[i] = &samplers_.at(plan.seqs[sampled[i]].id);
    }
    ctx.pool().ParallelFor(
        static_cast<int64_t>(sampled.size()),
        [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            runtime::Logprobs lp;
            const int token = samplers[i]->Sample(b.logits.data() + sample_rows[i] * vocab,
                                                  static_cast<int>(vocab), &lp);
            result.out[first + i] = {plan.seqs[sampled[i]].id, token};
            if (samplers[i]->wants_logprobs()) result.out[first + i].logprobs = std::move(lp);
          }
        },
        /*min_per_part=*/8);
    return absl::OkStatus();
  }
  // Scatter the rows back to their sequences.
  const size_t dim = b.hidden.size() / std::max(1, b.num_tokens());
  size_t row = 0;
  for (int m : call.members) {
    const int len = plan.seqs[m].len;
    hidden[m].assign(b.hidden.begin() + row * dim, b.hidden.begin() + (row + len) * dim);
    row += len;
  }
  return absl::OkStatus();
}

absl::Status Engine::Execute(const StepPlan& full, std::vector<StepOutput>* out,
                             std::map<RequestId, std::string>* failed) {
  for (const Fork& f : full.donate) RETURN_IF_ERROR(ForkKv(f));
  for (const Release& r : full.release) ReleaseKv(r);
  std::vector<absl::Status> broken;
  RETURN_IF_ERROR(MakeResident(full, &broken));
  // Loads for requests still waiting land while this step computes.
  StartLoads(full);
  // Requests of models with a block that failed to load leave every call (the calls at that
  // block had only them) and fail; the other tenants' requests run as planned.
  StepPlan filtered;
  if (!broken.empty()) {
    filtered = full;
    filtered.forks.clear();
    for (const Fork& f : full.forks) {
      if (broken[f.model].ok()) filtered.forks.push_back(f);
    }
    for (const PlannedSeq& s : full.seqs) {
      if (broken[s.model].ok() || failed->count(s.id)) continue;
      // The log gets the file and the reason; the client a message without server paths.
      spdlog::error("request {} fails: {}", s.id, std::string(broken[s.model].message()));
      (*failed)[s.id] = absl::StrCat("model ", scheduler_->models()[s.model].name,
                                     " is unavailable: one of its blocks failed to load");
    }
    for (auto& calls : filtered.rounds) {
      for (BlockCall& c : calls) {
        std::erase_if(c.members, [&](int m) { return !broken[full.seqs[m].model].ok(); });
      }
      std::erase_if(calls, [](const BlockCall& c) { return c.members.empty(); });
    }
  }
  const StepPlan& plan = broken.empty() ? full : filtered;
  for (const Fork& f : plan.forks) RETURN_IF_ERROR(ForkKv(f));
  // Per planned sequence: its tokens (the embed reads them; every batch carries them) and its
  // hidden rows between blocks. Gathered once per step, not per block call.
  std::vector<std::vector<int32_t>> tokens(plan.seqs.size());
  std::vector<std::vector<float>> hidden(plan.seqs.size());
  for (size_t m = 0; m < plan.seqs.size(); ++m) {
    const PlannedSeq& s = plan.seqs[m];
    const Request* r = scheduler_->Find(s.id);
    tokens[m].resize(s.len);
    for (int i = 0; i < s.len; ++i) tokens[m][i] = r->TokenAt(s.pos + i);
  }
  const int threads = ctx_.pool().size();
  std::vector<CallResult> results;
  for (const auto& calls : plan.rounds) {
    // The calls of an instance form a group. A group of few tokens runs on one thread, next to
    // the other small groups of the round (the per-model blocks of fine-tunes: many calls of a
    // few rows each, where splitting every matmul across threads costs more in fork-joins than
    // it gains); big groups use the whole pool, one after another. Results are the same either
    // way: no kernel's output depends on its thread split.
    std::vector<std::vector<const BlockCall*>> small, big;
    {
      std::map<InstanceId, int> index;  // instance -> its group
      std::vector<std::pair<std::vector<const BlockCall*>, int>> groups;  // calls, tokens
      for (const BlockCall& call : calls) {
        auto [it, fresh] = index.try_emplace(call.instance, static_cast<int>(groups.size()));
        if (fresh) groups.emplace_back();
        auto& [group, tokens] = groups[it->second];
        group.push_back(&call);
        for (int m : call.members) tokens += plan.seqs[m].len;
      }
      for (auto& [group, tokens] : groups) {
        (threads > 1 && tokens <= opt_.concurrent_call_tokens ? small : big)
            .push_back(std::move(group));
      }
      if (small.size() == 1) {  // nothing to run beside it
        big.push_back(std::move(small.back()));
        small.clear();
      }
    }
    for (const auto& g : big) {
      for (const BlockCall* call : g) {
        results.emplace_back();
        RETURN_IF_ERROR(RunCall(plan, *call, ctx_, tokens, hidden, results.back()));
      }
    }
    if (small.empty()) continue;
    while (serial_ctx_.size() < small.size()) {
      serial_cpu_.push_back(std::make_unique<runtime::CpuDevice>(1));
      serial_ctx_.push_back(std::make_unique<runtime::ExecContext>(serial_cpu_.back().get()));
    }
    const size_t first = results.size();
    results.resize(first + small.size());
    std::vector<absl::Status> status(small.size());
    ctx_.pool().Run(static_cast<int>(small.size()), [&](int i) {
      for (const BlockCall* call : small[i]) {
        status[i] = RunCall(plan, *call, *serial_ctx_[i], tokens, hidden, results[first + i]);
        if (!status[i].ok()) return;
      }
    });
    for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  }
  for (CallResult& r : results) {  // a call's rows come in order of position
    for (PromptRow& row : r.prompt) {
      auto it = prompt_lps_.find(row.id);
      if (it != prompt_lps_.end() && !it->second.delivered &&
          row.pos == static_cast<int>(it->second.got.size())) {
        it->second.got.push_back(std::move(row.logprobs));
      }
    }
  }
  for (CallResult& r : results) {
    for (StepOutput& o : r.out) {
      auto it = prompt_lps_.find(o.id);
      if (it != prompt_lps_.end() && !it->second.delivered) {
        o.prompt_logprobs = std::move(it->second.got);
        it->second.delivered = true;
      }
      out->push_back(std::move(o));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const CallResult& r : results) {
    for (const CallStats& c : r.calls) {
      ++stats_.block_calls;
      stats_.busy_s += c.secs;
      InstanceStats& st = stats_.instances[c.instance];
      ++st.calls;
      st.tokens += c.tokens;
      st.last_batch = c.tokens;
      st.busy_s += c.secs;
    }
  }
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
