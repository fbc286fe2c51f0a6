#include "scheduler/executor.h"

#include "absl/container/inlined_vector.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {

using runtime::BlockKind;

namespace {

constexpr size_t kAlign = 64;
size_t Aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

// Where the step's rows live in the arena.
struct Executor::Layout {
  std::vector<int> rank;            // per span: its place in the area order
  std::vector<size_t> token_row;    // per span: its first row among all the step's tokens
  std::vector<size_t> hidden_row;   // per span: its first row in its width's region
  std::vector<size_t> logits_at;    // per span: byte offset of its first logit row (in the arena)
  std::vector<int> logit_rows;      // per span: 0, 1 (the last position) or len (scored)
  std::map<int, size_t> region, staging;  // per hidden width: byte offsets of rows and staging
  size_t tokens_at = 0, token_staging_at = 0, logits_begin = 0, logits_end = 0, bytes = 0;
  int total_tokens = 0;
};

Executor::Executor(ExecutorOptions opt, runtime::Backend* backend, const InstanceTable* table,
                   std::vector<std::vector<InstanceId>> chains)
    : opt_(opt), backend_(backend != nullptr ? backend : &runtime::DefaultCpuBackend()),
      table_(table), chains_(std::move(chains)),
      cpu_(opt_.threads > 0 ? opt_.threads : runtime::DefaultThreadCount()), ctx_(&cpu_) {}

void Executor::Release(const scheduler::Release& r) {
  for (InstanceId i : chains_.at(r.model)) {
    if (runtime::Block* b = table_->instance(i)) b->ReleaseSequence(r.id);
  }
}

absl::Status Executor::Fork(const scheduler::Fork& f) {
  for (InstanceId i : chains_.at(f.model)) {
    runtime::Block* b = table_->instance(i);
    if (b == nullptr) return absl::InternalError("KV fork on a block that is not resident");
    RETURN_IF_ERROR(b->ForkSequence(f.src, f.dst, f.len));
  }
  return absl::OkStatus();
}

// Spans in the order of the instances they visit, round by round: the members of a call then
// lie side by side — all of them for a block every model shares, each model's own for its
// fine-tuned blocks.
Executor::Layout Executor::Arrange(const ExecInput& in) const {
  const size_t n = in.spans.size();
  std::vector<std::vector<InstanceId>> visits(n, std::vector<InstanceId>(in.rounds.size(), -1));
  std::vector<bool> at_head(n, false);
  for (size_t r = 0; r < in.rounds.size(); ++r) {
    for (const BlockCall& c : in.rounds[r]) {
      const bool head = table_->instance(c.instance)->kind() == BlockKind::kHead;
      for (int m : c.members) {
        visits[m][r] = c.instance;
        at_head[m] = at_head[m] || head;
      }
    }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return visits[a] < visits[b]; });
  Layout l;
  l.rank.resize(n);
  l.token_row.resize(n);
  l.hidden_row.resize(n);
  l.logits_at.assign(n, 0);
  l.logit_rows.assign(n, 0);
  std::map<int, size_t> rows_of;  // per width: rows so far
  size_t logit_bytes = 0;
  std::vector<size_t> logit_offset(n, 0);
  for (size_t k = 0; k < n; ++k) {
    const int m = order[k];
    const ExecSpan& s = in.spans[m];
    l.rank[m] = static_cast<int>(k);
    l.token_row[m] = l.total_tokens;
    l.total_tokens += s.len;
    l.hidden_row[m] = rows_of[s.dim];
    rows_of[s.dim] += s.len;
    if (at_head[m]) {
      l.logit_rows[m] = s.score_end > s.score_begin ? s.len : s.sample ? 1 : 0;
    }
    logit_offset[m] = logit_bytes;
    logit_bytes += static_cast<size_t>(l.logit_rows[m]) * s.vocab * sizeof(float);
  }
  size_t at = 0;
  l.tokens_at = at;
  at += Aligned(l.total_tokens * sizeof(int32_t));
  l.token_staging_at = at;
  at += Aligned(l.total_tokens * sizeof(int32_t));
  for (const auto& [dim, rows] : rows_of) {
    l.region[dim] = at;
    at += Aligned(rows * dim * sizeof(float));
    l.staging[dim] = at;
    at += Aligned(rows * dim * sizeof(float));
  }
  l.logits_begin = at;
  for (size_t m = 0; m < n; ++m) l.logits_at[m] = at + logit_offset[m];
  at += Aligned(logit_bytes);
  l.logits_end = l.logits_begin + logit_bytes;
  l.bytes = at;
  return l;
}

// The arena big enough, and the tokens in it: one copy in.
absl::Status Executor::Prepare(const ExecInput& in, const Layout& l) {
  if (arena_.bytes() < l.bytes) {
    const size_t want = std::max(l.bytes, arena_.bytes() * 3 / 2);
    arena_ = runtime::Buffer();  // the old one goes first
    ASSIGN_OR_RETURN(arena_, backend_->Allocate(want));
  }
  int32_t* dst = backend_->host_visible() ? reinterpret_cast<int32_t*>(arena() + l.tokens_at)
                                          : nullptr;
  if (dst == nullptr) {
    tokens_host_.resize(l.total_tokens);
    dst = tokens_host_.data();
  }
  for (size_t m = 0; m < in.spans.size(); ++m) {
    const ExecSpan& s = in.spans[m];
    std::copy(s.tokens.begin(), s.tokens.end(), dst + l.token_row[m]);
  }
  if (!backend_->host_visible() && l.total_tokens > 0) {
    backend_->CopyToDevice(arena() + l.tokens_at, dst, l.total_tokens * sizeof(int32_t));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExecResult> Executor::Run(const ExecInput& in) {
  for (const scheduler::Fork& f : in.donate) RETURN_IF_ERROR(Fork(f));
  for (const scheduler::Release& r : in.release) Release(r);
  for (const scheduler::Fork& f : in.forks) RETURN_IF_ERROR(Fork(f));
  for (RequestId id : in.end) samplers_.erase(id);
  for (const SamplerStart& s : in.start) {
    runtime::Sampler sampler(s.params);
    sampler.SetPrompt(s.prompt);
    samplers_.insert_or_assign(s.seq, std::move(sampler));
  }
  ExecResult result;
  if (in.spans.empty()) return result;
  const Layout layout = Arrange(in);
  RETURN_IF_ERROR(Prepare(in, layout));
  for (size_t r = 0; r < in.rounds.size();) {
    const size_t k = FusibleRounds(in, r);
    if (k == 1) {
      RETURN_IF_ERROR(RunRound(in, layout, in.rounds[r], result));
    } else {  // consecutive calls on one worker: one round trip
      std::vector<const BlockCall*> segment;
      for (size_t i = r; i < r + k; ++i) segment.push_back(&in.rounds[i][0]);
      RETURN_IF_ERROR(RunCall(in, layout, segment, 0, ctx_, result.calls));
    }
    r += k;
  }
  SampleAndScore(in, layout, result);
  return result;
}

// The calls of an instance form a group. A group of few tokens runs on one thread, next to the
// other small groups of the round (the per-model blocks of fine-tunes: many calls of a few rows
// each, where splitting every matmul across threads costs more in fork-joins than it gains);
// big groups use the whole pool, one after another. Results are the same either way: no
// kernel's output depends on its thread split.
absl::Status Executor::RunRound(const ExecInput& in, const Layout& l,
                                const std::vector<BlockCall>& calls, ExecResult& result) {
  const int threads = ctx_.pool().size();
  // Staging rows for calls whose members do not lie together: disjoint per call.
  std::vector<size_t> staging(calls.size(), 0);
  std::map<int, size_t> next_staging;
  std::vector<std::pair<std::vector<int>, int>> groups;  // calls (indices), tokens
  std::map<InstanceId, int> index;
  for (size_t c = 0; c < calls.size(); ++c) {
    int tokens = 0, dim = 0;
    for (int m : calls[c].members) {
      tokens += in.spans[m].len;
      dim = in.spans[m].dim;
    }
    staging[c] = next_staging[dim];
    next_staging[dim] += tokens;
    auto [it, fresh] = index.try_emplace(calls[c].instance, static_cast<int>(groups.size()));
    if (fresh) groups.emplace_back();
    groups[it->second].first.push_back(static_cast<int>(c));
    groups[it->second].second += tokens;
  }
  std::vector<const std::vector<int>*> small, big;
  for (const auto& [group, tokens] : groups) {
    (threads > 1 && tokens <= opt_.concurrent_call_tokens ? small : big).push_back(&group);
  }
  if (small.size() == 1) {  // nothing to run beside it
    big.push_back(small.back());
    small.clear();
  }
  for (const std::vector<int>* g : big) {
    for (int c : *g) {
      const BlockCall* call = &calls[c];
      RETURN_IF_ERROR(RunCall(in, l, {&call, 1}, staging[c], ctx_, result.calls));
    }
  }
  if (small.empty()) return absl::OkStatus();
  while (serial_ctx_.size() < small.size()) {
    serial_cpu_.push_back(std::make_unique<runtime::CpuDevice>(1));
    serial_ctx_.push_back(std::make_unique<runtime::ExecContext>(serial_cpu_.back().get()));
  }
  std::vector<std::vector<ExecResult::Call>> stats(small.size());
  std::vector<absl::Status> status(small.size());
  ctx_.pool().Run(static_cast<int>(small.size()), [&](int i) {
    for (int c : *small[i]) {
      const BlockCall* call = &calls[c];
      status[i] = RunCall(in, l, {&call, 1}, staging[c], *serial_ctx_[i], stats[i]);
      if (!status[i].ok()) return;
    }
  });
  for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  for (auto& s : stats) result.calls.insert(result.calls.end(), s.begin(), s.end());
  return absl::OkStatus();
}

size_t Executor::FusibleRounds(const ExecInput& in, size_t r) const {
  if (in.rounds[r].size() != 1) return 1;
  const BlockCall& first = in.rounds[r][0];
  const runtime::Block* prev = table_->instance(first.instance);
  const void* host = prev->segment_host();
  if (host == nullptr) return 1;
  size_t k = 1;
  for (; r + k < in.rounds.size() && in.rounds[r + k].size() == 1; ++k) {
    const BlockCall& c = in.rounds[r + k][0];
    if (prev->kind() == BlockKind::kHead || c.members != first.members) break;
    const runtime::Block* b = table_->instance(c.instance);
    if (b->segment_host() != host || b->kind() == BlockKind::kEmbed) break;
    prev = b;
  }
  return k;
}

// Block calls on their members' rows: in place when they lie together in the arena, gathered
// into staging (and scattered back) when not. Members go in area order. Several calls (a
// segment) share the members and run one after another on the same rows.
absl::Status Executor::RunCall(const ExecInput& in, const Layout& l,
                               absl::Span<const BlockCall* const> calls, size_t staging_row,
                               runtime::ExecContext& ctx, std::vector<ExecResult::Call>& stats) {
  const BlockCall& call = *calls.front();
  absl::InlinedVector<runtime::Block*, 8> blocks;  // per block call: no allocation
  for (const BlockCall* c : calls) blocks.push_back(table_->instance(c->instance));
  runtime::Block& block = *blocks.front();
  const bool head = blocks.back()->kind() == BlockKind::kHead;
  std::vector<int> members = call.members;
  std::sort(members.begin(), members.end(), [&](int a, int b) { return l.rank[a] < l.rank[b]; });
  bool together = true;
  for (size_t i = 1; i < members.size(); ++i) together &= l.rank[members[i]] == l.rank[members[i - 1]] + 1;
  const int dim = in.spans[members.front()].dim;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  std::vector<runtime::SeqSpan> spans;
  std::vector<int> logit_rows;
  std::vector<int32_t> hidden_index, token_index;  // rows to gather (only when not together)
  int rows = 0;
  for (int m : members) {
    const ExecSpan& s = in.spans[m];
    auto logits = runtime::SeqSpan::Logits::kNone;
    if (head && l.logit_rows[m] == s.len && s.score_end > s.score_begin) {
      logits = runtime::SeqSpan::Logits::kAll;
      for (int i = 0; i < s.len; ++i) logit_rows.push_back(rows + i);
    } else if (head && l.logit_rows[m] == 1) {
      logits = runtime::SeqSpan::Logits::kLast;
      logit_rows.push_back(rows + s.len - 1);
    }
    spans.push_back({s.seq, s.pos, s.len, logits, s.adapter});
    for (int i = 0; i < s.len && !together; ++i) {
      hidden_index.push_back(static_cast<int32_t>(l.hidden_row[m] + i));
      token_index.push_back(static_cast<int32_t>(l.token_row[m] + i));
    }
    rows += s.len;
  }
  uint8_t* region = arena() + l.region.at(dim);
  runtime::BlockIo io;
  io.spans = spans;
  io.num_tokens = rows;
  io.logit_rows = logit_rows;
  io.logits = head ? reinterpret_cast<float*>(arena() + l.logits_at[members.front()]) : nullptr;
  if (together) {
    const int first = members.front();
    io.hidden = reinterpret_cast<float*>(region + l.hidden_row[first] * row_bytes);
    io.tokens = reinterpret_cast<const int32_t*>(arena() + l.tokens_at) + l.token_row[first];
  } else {
    auto* hidden = reinterpret_cast<float*>(arena() + l.staging.at(dim) + staging_row * row_bytes);
    auto* tokens = reinterpret_cast<int32_t*>(arena() + l.token_staging_at) + staging_row;
    backend_->GatherRows(hidden, region, hidden_index.data(), rows, row_bytes);
    backend_->GatherRows(tokens, arena() + l.tokens_at, token_index.data(), rows, sizeof(int32_t));
    io.hidden = hidden;
    io.tokens = tokens;
  }
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(blocks.size() == 1 ? block.Compute(io, ctx)
                                     : block.ComputeSegment(blocks, io, ctx));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const BlockCall* c : calls) stats.push_back({c->instance, rows, secs / calls.size()});
  if (!together && !head) {
    backend_->ScatterRows(region, io.hidden, hidden_index.data(), rows, row_bytes);
  }
  return absl::OkStatus();
}

// The logits out (one copy, none on the CPU), then per span its scored prompt positions and
// its sampled token; both split across the pool (each sequence has its own sampler and RNG).
void Executor::SampleAndScore(const ExecInput& in, const Layout& l, ExecResult& result) {
  const size_t bytes = l.logits_end - l.logits_begin;
  uint8_t* logits = arena() + l.logits_begin;
  if (!backend_->host_visible() && bytes > 0) {
    logits_host_.resize(bytes / sizeof(float));
    backend_->CopyToHost(logits_host_.data(), logits, bytes);
    (void)backend_->stream().Synchronize();
    logits = reinterpret_cast<uint8_t*>(logits_host_.data());
  }
  auto row = [&](int m, int r) {
    return reinterpret_cast<float*>(logits + (l.logits_at[m] - l.logits_begin)) +
           static_cast<size_t>(r) * in.spans[m].vocab;
  };
  std::vector<std::pair<int, int>> jobs;  // (span, position) to score
  std::vector<int> sampled;               // spans that sample
  for (size_t m = 0; m < in.spans.size(); ++m) {
    const ExecSpan& s = in.spans[m];
    if (l.logit_rows[m] == 0) continue;
    if (l.logit_rows[m] == s.len && s.score_end > s.score_begin) {
      for (int p = s.score_begin; p < s.score_end; ++p) jobs.push_back({static_cast<int>(m), p});
    }
    if (s.sample) sampled.push_back(static_cast<int>(m));
  }
  result.scored.resize(jobs.size());
  ctx_.pool().ParallelFor(
      static_cast<int64_t>(jobs.size()),
      [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const auto [m, p] = jobs[j];
          const ExecSpan& s = in.spans[m];
          result.scored[j] = {s.seq, p,
                              runtime::ComputeLogprobs(row(m, p - s.pos), s.vocab,
                                                       s.score_targets[p - s.score_begin],
                                                       s.score_top)};
        }
      },
      /*min_per_part=*/4);
  result.out.resize(sampled.size());
  std::vector<runtime::Sampler*> samplers(sampled.size());
  for (size_t i = 0; i < sampled.size(); ++i) samplers[i] = &samplers_.at(in.spans[sampled[i]].seq);
  ctx_.pool().ParallelFor(
      static_cast<int64_t>(sampled.size()),
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int m = sampled[i];
          const ExecSpan& s = in.spans[m];
          runtime::Logprobs lp;
          const int token = samplers[i]->Sample(row(m, l.logit_rows[m] - 1), s.vocab, &lp);
          result.out[i] = {s.seq, token};
          if (samplers[i]->wants_logprobs()) result.out[i].logprobs = std::move(lp);
        }
      },
      /*min_per_part=*/8);
}

}  // namespace blockserve::scheduler
