// Equivalence evaluation on the real model and synthetic fine-tunes of it, and the resolver.
#include "blockzoo/equiv.h"

#include "blockzoo/derive.h"
#include "blockzoo/importer.h"
#include "blockzoo/zoo_model.h"
#include "runtime/device.h"
#include "runtime/sampler.h"
#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using testing::IsOk;

DeriveOptions Partial(const std::string& name, int layers, double rel, uint64_t seed) {
  DeriveOptions o;
  o.base = "base";
  o.name = name;
  o.top_layers = layers;
  o.rel_norm = rel;
  o.seed = seed;
  return o;
}

class EquivTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = testing::ModelsDir();
    if (!dir) GTEST_SKIP() << "real models not found (../shared/models)";
    auto z = Zoo::Open(tmp_.path(), true);
    ASSERT_THAT(z, IsOk());
    zoo_ = std::move(*z);
    ImportOptions opt;
    opt.name = "base";
    ASSERT_THAT(ImportModel(*zoo_, *dir + "/stories260K/stories260K.bin", opt), IsOk());
    // tiny and big change layers 3-4 (by 1e-3 and 0.3); t1 only layer 4, so it shares base's
    // layer-3 blocks.
    ASSERT_THAT(DeriveModel(*zoo_, Partial("tiny", 2, 1e-3, 1)), IsOk());
    ASSERT_THAT(DeriveModel(*zoo_, Partial("big", 2, 0.3, 2)), IsOk());
    ASSERT_THAT(DeriveModel(*zoo_, Partial("t1", 1, 1e-3, 3)), IsOk());
    EquivOptions eo;
    eo.model = "tiny";
    eo.include_reference = true;
    eo.threads = 2;
    auto r = EvaluateEquivalence(*zoo_, eo);
    ASSERT_THAT(r, IsOk());
    record_ = *r;
    auto lock = zoo_->LockForWrite();
    ASSERT_THAT(lock, IsOk());
    ASSERT_THAT(StoreEquivRecord(*zoo_, *lock, record_), IsOk());
  }
  // The entry of `candidate_model`'s block at `position` (or the identity / self).
  const EquivEntry* Find(int position, const std::string& what) {
    for (const EquivEntry& e : record_.entries) {
      if (e.position != position) continue;
      if (what == kIdentity ? e.candidate == kIdentity
                            : (what == "self" ? e.candidate == e.reference
                                              : std::count(e.candidate_models.begin(),
                                                           e.candidate_models.end(), what) > 0)) {
        return &e;
      }
    }
    return nullptr;
  }
  testing::TempDir tmp_;
  std::unique_ptr<Zoo> zoo_;
  EquivRecord record_;
};

TEST_F(EquivTest, ScoresSeparateIdenticalSlightlyAndStronglyPerturbedBlocks) {
  // Chain positions: embed 0, attn/ffn of layer L at 1 + 2L and 2 + 2L, head 11.
  for (int pos = 1; pos <= 10; ++pos) {
    const EquivEntry* self = Find(pos, "self");
    ASSERT_NE(self, nullptr);
    EXPECT_EQ(self->cos_delta, 1.0);
    EXPECT_EQ(self->rel_l2_delta, 0.0);
    EXPECT_EQ(self->top1, 1.0);
    EXPECT_EQ(self->kl, 0.0);
    const EquivEntry* skip = Find(pos, kIdentity);
    ASSERT_NE(skip, nullptr);
    EXPECT_LT(skip->cos_out, 1.0);
    EXPECT_GT(skip->kl, 0.0);
  }
  // tiny's layers 3-4 (positions 7-10) vs base's, 1e-3 apart; vs big's, 0.3 apart.
  for (int pos = 7; pos <= 10; ++pos) {
    const EquivEntry* near = Find(pos, "base");
    const EquivEntry* far = Find(pos, "big");
    ASSERT_NE(near, nullptr);
    ASSERT_NE(far, nullptr);
    EXPECT_GT(near->cos_delta, 0.999) << pos;
    EXPECT_GE(near->top1, 0.99) << pos;
    EXPECT_LT(far->cos_delta, 0.99) << pos;
    EXPECT_LT(far->cos_delta, near->cos_delta);
    EXPECT_GT(far->kl, near->kl);
    std::printf("position %d: 1e-3 cos %.6f top1 %.4f kl %.2e | 0.3 cos %.4f top1 %.4f kl %.2e\n",
                pos, near->cos_delta, near->top1, near->kl, far->cos_delta, far->top1, far->kl);
  }
  // Below layer 3 every model shares tiny's blocks: the only candidates are skip and self.
  for (int pos = 1; pos <= 6; ++pos) {
    int n = 0;
    for (const EquivEntry& e : record_.entries) n += e.position == pos;
    EXPECT_EQ(n, 2) << pos;
  }
  auto stored = LoadEquivRecords(*zoo_, "tiny");
  ASSERT_THAT(stored, IsOk());
  ASSERT_EQ(stored->size(), 1u);
  EXPECT_EQ((*stored)[0].entries.size(), record_.entries.size());
}

TEST_F(EquivTest, ResolverSubstitutesOnlyWhatPassesAndIsMoreShared) {
  ResolvePolicy exact;
  auto rc = ResolveChain(*zoo_, "tiny", exact);
  ASSERT_THAT(rc, IsOk());
  EXPECT_EQ(rc->substituted, 0);
  EXPECT_EQ(rc->blocks.size(), 12u);

  ResolvePolicy eq;
  eq.mode = ResolvePolicy::Mode::kEquivalent;
  eq.threshold = 0.99;
  rc = ResolveChain(*zoo_, "tiny", eq);
  ASSERT_THAT(rc, IsOk());
  // Layer 3: base's blocks pass and are shared by base and t1 -> substituted. Layer 4: base's
  // pass but have one user, like tiny's own -> kept. big's never pass.
  auto base = zoo_->GetManifest("base");
  auto tiny = zoo_->GetManifest("tiny");
  ASSERT_THAT(base, IsOk());
  EXPECT_EQ(rc->substituted, 2);
  EXPECT_EQ(rc->skipped, 0);
  for (int pos : {7, 8}) EXPECT_EQ(rc->blocks[pos].entry.block, base->chain[pos].block);
  for (int pos : {9, 10}) EXPECT_EQ(rc->blocks[pos].entry.block, tiny->chain[pos].block);

  // The resolved chain runs and stays close to the model.
  auto chain = BuildResolvedChain(*zoo_, *tiny, *rc);
  ASSERT_THAT(chain, IsOk());
  auto own = LoadZooModel(*zoo_, "tiny", {}, false);
  ASSERT_THAT(own, IsOk());
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  const std::vector<int32_t> toks = {1, 403, 407, 261, 378};
  runtime::Batch a, b;
  a.Add(1, 0, toks.data(), 5, runtime::SeqSpan::Logits::kAll);
  b.Add(1, 0, toks.data(), 5, runtime::SeqSpan::Logits::kAll);
  ASSERT_THAT(chain->Forward(a, ctx), IsOk());
  ASSERT_THAT(own->chain->Forward(b, ctx), IsOk());
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(runtime::Argmax(a.logits.data() + r * 512, 512),
              runtime::Argmax(b.logits.data() + r * 512, 512));
  }

  // Skips: at threshold 0 every sub-layer may go (embed + head remain); above 1 none.
  eq.allow_skip = true;
  eq.threshold = 0.0;
  rc = ResolveChain(*zoo_, "tiny", eq);
  ASSERT_THAT(rc, IsOk());
  EXPECT_EQ(rc->skipped, 10);
  EXPECT_EQ(rc->blocks.size(), 2u);
  EXPECT_THAT(BuildResolvedChain(*zoo_, *tiny, *rc), IsOk());
  eq.threshold = 1.5;
  rc = ResolveChain(*zoo_, "tiny", eq);
  ASSERT_THAT(rc, IsOk());
  EXPECT_EQ(rc->skipped + rc->substituted, 0);
}

}  // namespace
}  // namespace blockserve::blockzoo
