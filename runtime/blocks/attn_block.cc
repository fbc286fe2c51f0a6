// attn: RMSNorm, fused Q|K|V projection, RoPE, grouped-query attention over this block's paged
// KV cache, output projection, residual add. Stateful: holds the KV of its sequences.
#include <cmath>
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "runtime/blocks/blocks.h"
#include "runtime/kv_cache.h"
#include "runtime/linear.h"
#include "runtime/lora.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {
namespace {

kernels::KvType KvTypeOf(DType t) {
  return t == DType::kBF16 ? kernels::KvType::kBF16 : kernels::KvType::kF32;
}

class AttnBlock final : public Block {
 public:
  AttnBlock(const ModelConfig& c, Tensor norm, PackedLinear qkv, PackedLinear wo,
            const BlockOptions& opt)
      : cfg_(c), norm_(std::move(norm)), qkv_(std::move(qkv)), wo_(std::move(wo)),
        shape_{c.n_heads, c.n_kv_heads, c.head_dim(), opt.kv_page_size, KvTypeOf(opt.kv_dtype)},
        kv_(c.kv_dim(), opt.kv_page_size, opt.kv_max_pages,
            static_cast<int>(DTypeSize(opt.kv_dtype)), opt.backend) {}
  BlockKind kind() const override { return BlockKind::kAttn; }
  size_t weight_bytes() const override { return norm_.nbytes() + qkv_.bytes() + wo_.bytes(); }
  void ReleaseSequence(SeqId seq) override { kv_.Release(seq); }
  int kv_pages_used() const override { return kv_.pages_used(); }
  absl::Status ForkSequence(SeqId src, SeqId dst, int len) override {
    return kv_.Fork(src, dst, len);
  }
  absl::Status AttachAdapter(int32_t key, std::shared_ptr<const LoraAdapter> a) override {
    return adapters_.Attach(BlockKind::kAttn, key, std::move(a));
  }
  void DetachAdapter(int32_t key) override { adapters_.Detach(key); }

  int hidden_dim() const override { return cfg_.dim; }

  absl::Status Compute(const BlockIo& io, ExecContext& ctx) override {
    const int t = io.num_tokens;
    const int dim = cfg_.dim, kv_dim = cfg_.kv_dim(), qkv_n = dim + 2 * kv_dim;
    RETURN_IF_ERROR(ReserveKv(io));
    float* x = io.hidden;                                    // [t, dim]
    float* xn = ctx.Scratch(0, static_cast<size_t>(t) * dim);           // [t, dim]
    float* qkv = ctx.Scratch(1, static_cast<size_t>(t) * qkv_n);        // [t, dim + 2*kv_dim]
    float* att = ctx.Scratch(2, static_cast<size_t>(t) * dim);          // [t, dim]
    float* out = ctx.Scratch(3, static_cast<size_t>(t) * dim);          // [t, dim]
    NormRows(ctx, x, norm_.data<float>(), t, dim, cfg_.norm_eps, xn);
    qkv_.Forward(ctx.pool(), xn, t, qkv);
    adapters_.Apply(io, "wq", ctx, xn, qkv, qkv_n, 0);
    adapters_.Apply(io, "wk", ctx, xn, qkv, qkv_n, dim);
    adapters_.Apply(io, "wv", ctx, xn, qkv, qkv_n, dim + kv_dim);
    WriteKv(io, ctx, qkv);
    Attend(io, ctx, qkv, att);
    wo_.Forward(ctx.pool(), att, t, out);
    adapters_.Apply(io, "wo", ctx, att, out, dim, 0);
    AddResidual(ctx, t, dim, out, x);
    return absl::OkStatus();
  }

 private:
  absl::Status ReserveKv(const BlockIo& io) {
    for (const SeqSpan& s : io.spans) {
      const int have = kv_.Length(s.seq);
      if (s.pos != have) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sequence ", s.seq, ": span starts at position ", s.pos, " but its KV holds ", have));
      }
      if (s.pos + s.len > cfg_.max_seq_len) {
        return absl::OutOfRangeError(absl::StrCat("sequence ", s.seq, ": position ",
                                                  s.pos + s.len, " exceeds the context length ",
                                                  cfg_.max_seq_len));
      }
      RETURN_IF_ERROR(kv_.Reserve(s.seq, s.pos + s.len));
    }
    return absl::OkStatus();
  }

  // Rotates q and k of every token by its position and appends k, v to the sequence's KV.
  // Work goes in runs: consecutive tokens of one sequence in one page (a decode token is a run
  // of one), each run rotated and stored by one task (runs write disjoint slots).
  void WriteKv(const BlockIo& io, ExecContext& ctx, float* qkv) {
    const int dim = cfg_.dim, kv_dim = cfg_.kv_dim(), hd = cfg_.head_dim();
    const int qkv_n = dim + 2 * kv_dim, ps = kv_.page_size();
    kv_runs_.clear();
    int max_pos = 0, row = 0;
    for (const SeqSpan& s : io.spans) {
      for (int i = 0; i < s.len;) {
        const int pos = s.pos + i;
        const int n = std::min(s.len - i, ps - pos % ps);
        kv_runs_.push_back({kv_.KeyPage(s.seq, pos), kv_.ValuePage(s.seq, pos), pos, n, row + i});
        i += n;
      }
      row += s.len;
      max_pos = std::max(max_pos, s.pos + s.len - 1);
    }
    RopeCos(max_pos);  // grows the table now: in the parallel section RopeCos only reads
    // Parts of at least ExecContext::kMinRowsPerTask tokens on average, as ForRows splits rows.
    const int64_t runs = static_cast<int64_t>(kv_runs_.size());
    const int64_t min_runs =
        std::max<int64_t>(1, (ExecContext::kMinRowsPerTask * runs + row - 1) / std::max(row, 1));
    ctx.pool().ParallelFor(runs, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const KvRun& run = kv_runs_[r];
        float* first = qkv + static_cast<size_t>(run.row) * qkv_n;
        for (int i = 0; i < run.n; ++i) {
          float* q = first + static_cast<size_t>(i) * qkv_n;
          const float* cos_v = RopeCos(run.pos + i);
          const float* sin_v = cos_v + hd / 2;
          kernels::ApplyRope(cfg_.rope_style, q, cfg_.n_heads, hd, cos_v, sin_v);
          kernels::ApplyRope(cfg_.rope_style, q + dim, cfg_.n_kv_heads, hd, cos_v, sin_v);
        }
        kernels::StoreKvRows(first + dim, qkv_n, first + dim + kv_dim, qkv_n, run.n, shape_,
                             run.pos % ps, run.k_page, run.v_page);
      }
    }, min_runs);
    for (const SeqSpan& s : io.spans) kv_.SetLength(s.seq, s.pos + s.len);
  }

  // cos then sin of position `pos` ([head_dim/2] each), from a table grown on demand.
  const float* RopeCos(int pos) {
    const int half = cfg_.head_dim() / 2;
    if (pos >= rope_positions_) {
      const int n = std::min(cfg_.max_seq_len, std::max(pos + 1, 2 * rope_positions_));
      rope_table_.resize(static_cast<size_t>(n) * 2 * half);
      for (int p = rope_positions_; p < n; ++p) {
        float* row = rope_table_.data() + static_cast<size_t>(p) * 2 * half;
        kernels::RopeAngles(p, cfg_.head_dim(), cfg_.rope_theta, row, row + half);
      }
      rope_positions_ = n;
    }
    return rope_table_.data() + static_cast<size_t>(pos) * 2 * half;
  }

  // Causal attention over positions [0, pos] per token. Prefill tokens go in groups of up to
  // kMaxAttendRows consecutive positions that share their K loads (results bit-identical to one
  // at a time, so chunking and batching never change them). Tasks are (group, head group): all
  // heads of a group in one task when there are enough groups to keep every thread busy.
  void Attend(const BlockIo& io, ExecContext& ctx, const float* qkv, float* att) {
    const int dim = cfg_.dim, qkv_n = dim + 2 * cfg_.kv_dim();
    rows_.clear();
    int row = 0;
    for (const SeqSpan& s : io.spans) {
      const kernels::PageTable table = kv_.Table(s.seq);
      for (int i = 0; i < s.len; i += kernels::kMaxAttendRows) {
        const int n = std::min(kernels::kMaxAttendRows, s.len - i);
        rows_.push_back({table, s.pos + i, n, row + i});
      }
      row += s.len;
    }
    const int heads = cfg_.n_heads;
    const int items = static_cast<int>(rows_.size());
    const int threads = ctx.pool().size();
    const int per_task = items >= 4 * threads ? heads : 1;
    const int groups = heads / per_task;
    ctx.pool().Run(items * groups, [&](int task) {
      thread_local std::vector<float> scores;
      const Row& r = rows_[task / groups];
      const int h0 = (task % groups) * per_task;
      const int last = r.pos + r.n;  // context of the group's last row
      const int lds = (last + kernels::kPageAlign - 1) / kernels::kPageAlign * kernels::kPageAlign;
      if (scores.size() < static_cast<size_t>(lds) * r.n) scores.resize(static_cast<size_t>(lds) * r.n);
      const float* q = qkv + static_cast<size_t>(r.row) * qkv_n;
      float* out = att + static_cast<size_t>(r.row) * dim;
      if (r.n == 1) {
        kernels::AttendOne(q, r.kv, r.pos + 1, shape_, h0, h0 + per_task, scores.data(), out);
      } else {
        kernels::AttendRows(q, qkv_n, r.n, r.kv, r.pos + 1, shape_, h0, h0 + per_task,
                            scores.data(), lds, out, dim);
      }
    });
  }

  struct Row {
    kernels::PageTable kv;
    int pos;  // position of the first row
    int n;    // consecutive rows
    int row;  // index of the first row in the batch
  };
  std::vector<Row> rows_;
  struct KvRun {
    void* k_page;
    void* v_page;
    int pos;  // position of the first token
    int n;    // consecutive tokens, all in this page
    int row;  // index of the first token in the batch
  };
  std::vector<KvRun> kv_runs_;

  ModelConfig cfg_;
  Tensor norm_;       // [dim] f32
  PackedLinear qkv_;  // [dim + 2*kv_dim, dim]: wq rows, wk rows, wv rows
  PackedLinear wo_;   // [dim, dim]
  kernels::AttentionShape shape_;
  KvCache kv_;
  AdapterTable adapters_;
  std::vector<float> rope_table_;  // [positions][cos(head_dim/2), sin(head_dim/2)]
  int rope_positions_ = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Block>> MakeAttnBlock(const ModelWeights& w, int layer,
                                                     const BlockOptions& opt) {
  const ModelConfig& c = w.config;
  if (opt.kv_page_size <= 0 || opt.kv_page_size % kernels::kPageAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv_page_size must be a positive multiple of ",
                                                   kernels::kPageAlign, ", got ", opt.kv_page_size));
  }
  if (opt.kv_dtype != DType::kF32 && opt.kv_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("kv_dtype must be f32 or bf16, got ",
                                                   DTypeName(opt.kv_dtype)));
  }
  if (opt.kv_dtype == DType::kBF16 && c.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a bf16 KV cache needs an even head_dim (its pages pair dimensions), got ", c.head_dim()));
  }
  if (c.head_dim() > kernels::kMaxHeadDim) {
    return absl::UnimplementedError(absl::StrCat("head_dim ", c.head_dim(), " exceeds ",
                                                 kernels::kMaxHeadDim));
  }
  ASSIGN_OR_RETURN(const Tensor* norm, w.Get(LayerTensor(layer, "attention_norm"), {c.dim}));
  ASSIGN_OR_RETURN(const Tensor* wq, w.Get(LayerTensor(layer, "wq"), {c.dim, c.dim}));
  ASSIGN_OR_RETURN(const Tensor* wk, w.Get(LayerTensor(layer, "wk"), {c.kv_dim(), c.dim}));
  ASSIGN_OR_RETURN(const Tensor* wv, w.Get(LayerTensor(layer, "wv"), {c.kv_dim(), c.dim}));
  ASSIGN_OR_RETURN(const Tensor* wo, w.Get(LayerTensor(layer, "wo"), {c.dim, c.dim}));
  const DType storage = opt.weight_dtype.value_or(wq->dtype());
  ASSIGN_OR_RETURN(PackedLinear qkv, PackedLinear::Pack({wq, wk, wv}, storage));
  ASSIGN_OR_RETURN(PackedLinear o, PackedLinear::Pack({wo}, storage));
  return std::make_shared<AttnBlock>(c, ToF32Tensor(*norm), std::move(qkv), std::move(o), opt);
}

}  // namespace blockserve::runtime
