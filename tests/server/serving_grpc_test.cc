// The gRPC services on loopback through the generated stubs: streaming and unary generation
// equal llama2.c's reference, models and errors, health, and the admin API (unload, load,
// residency, LoRA adapters).
#include "tests/server/serving_test_fixture.h"

namespace blockserve::server {
namespace {

TEST_F(ServingTest, GrpcGenerateStreamsTheReferenceTokens) {
  auto stub = Stub();
  for (const Case& c : *cases_) {
    v1::GenerateRequest req;
    req.set_model("stories260K");
    if (c.prompt.empty()) {
      for (int32_t t : c.prompt_ids) req.mutable_token_ids()->add_ids(t);
    } else {
      req.set_text(c.prompt);
    }
    req.set_max_tokens(static_cast<int>(c.generated.size()));
    grpc::ClientContext ctx;
    Auth(&ctx, kAcme);
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse msg;
    std::vector<int32_t> tokens;
    std::string text, finish;
    int messages = 0;
    while (reader->Read(&msg)) {
      ++messages;
      tokens.insert(tokens.end(), msg.token_ids().begin(), msg.token_ids().end());
      text += msg.text();
      if (!msg.finish_reason().empty()) {
        finish = msg.finish_reason();
        EXPECT_EQ(msg.usage().completion_tokens(), static_cast<int>(c.generated.size()));
        EXPECT_EQ(msg.usage().prompt_tokens(), static_cast<int>(c.prompt_ids.size()));
      }
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(tokens, c.generated);
    EXPECT_EQ(text, c.text);
    EXPECT_EQ(finish, "length");
    EXPECT_GT(messages, 1);
  }
}

TEST_F(ServingTest, GrpcCompleteModelsAndErrors) {
  auto stub = Stub();
  const Case& c = (*cases_)[1];
  v1::GenerateRequest req;
  req.set_model("stories260K");
  req.set_text(c.prompt);
  req.set_max_tokens(static_cast<int>(c.generated.size()));
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kAcme);
    v1::GenerateResponse resp;
    ASSERT_TRUE(stub->Complete(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.text(), c.text);
    EXPECT_EQ(std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end()), c.generated);
    EXPECT_EQ(resp.finish_reason(), "length");
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kBeta);
    v1::ListModelsResponse resp;
    ASSERT_TRUE(stub->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
    ASSERT_EQ(resp.models_size(), 1);
    EXPECT_EQ(resp.models(0).context_length(), 512);
    EXPECT_EQ(resp.models(0).blocks_size(), 12);  // embed, 5 x (attn, ffn), head
  }
  auto code = [&](const std::string& key, const std::string& model, int max_tokens = 4) {
    grpc::ClientContext ctx;
    if (!key.empty()) Auth(&ctx, key);
    v1::GenerateRequest r = req;
    r.set_model(model);
    r.set_max_tokens(max_tokens);
    v1::GenerateResponse resp;
    return stub->Complete(&ctx, r, &resp).error_code();
  };
  EXPECT_EQ(code("", "stories260K"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code("sk-nope-000000000", "stories260K"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(code(kAcme, "nope"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(code(kBeta, "ft1"), grpc::StatusCode::NOT_FOUND);  // as a missing model
  EXPECT_EQ(code(kAcme, "stories260K", 100000), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(kAcme, "stories260K", -1), grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kAcme);
    v1::GetModelRequest g;
    g.set_name("lora4");
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModel(&ctx, g, &info).ok());
    EXPECT_EQ(info.parent(), "stories260K");
    EXPECT_TRUE(info.adapter());
  }
}

TEST_F(ServingTest, GrpcHealthService) {
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_->port()),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  grpc::Slice empty;
  grpc::ByteBuffer req(&empty, 1), resp;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                    [&](grpc::Status s) { done.set_value(s); });
  ASSERT_TRUE(done.get_future().get().ok());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // status: SERVING
}

TEST_F(ServingTest, AdminUnloadsAndLoadsModelsAndShowsResidency) {
  auto admin = AdminStub();
  auto residency = [&](const std::string& key, v1::ResidencyResponse* r) {
    grpc::ClientContext ctx;
    Auth(&ctx, key);
    return admin->Residency(&ctx, v1::ResidencyRequest(), r);
  };
  {
    v1::ResidencyResponse r;
    EXPECT_EQ(residency(kAcme, &r).error_code(),  // not an admin key
              grpc::StatusCode::PERMISSION_DENIED);
  }
  // ft1 runs once (its own top layers resident), then is unloaded: its own blocks are freed,
  // the shared ones stay; its requests are refused until it is loaded again.
  ASSERT_EQ(Post("/v1/completions", {{"model", "ft1"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status, 200);
  WaitIdle();
  int own = 0;  // instances only ft1 uses (its changed blocks), all resident now
  {
    v1::ResidencyResponse r;
    ASSERT_TRUE(residency(kAdmin, &r).ok());
    for (const auto& b : r.blocks()) {
      if (b.models_size() == 1 && b.models(0) == "ft1") {
        EXPECT_TRUE(b.resident()) << b.name();
        ++own;
      }
    }
  }
  EXPECT_GE(own, 2);
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kAdmin);
    v1::UnloadModelRequest u;
    u.set_name("ft1");
    v1::UnloadModelResponse r;
    ASSERT_TRUE(admin->UnloadModel(&ctx, u, &r).ok());
    EXPECT_EQ(r.blocks_evicted(), own);
  }
  const HttpReply refused = Post("/v1/completions", {{"model", "ft1"}, {"prompt", "Tom"}});
  EXPECT_EQ(refused.status, 503) << refused.body;
  {
    v1::ResidencyResponse r;
    ASSERT_TRUE(residency(kAdmin, &r).ok());
    int shared = 0, ft1_only_resident = 0;
    for (const auto& b : r.blocks()) {
      if (b.models_size() == 3) ++shared;  // used by stories260K, ft1 and lora4
      if (b.models_size() == 1 && b.models(0) == "ft1") ft1_only_resident += b.resident();
    }
    EXPECT_GE(shared, 8);
    EXPECT_EQ(ft1_only_resident, 0);
    EXPECT_GT(r.resident_bytes(), 0u);
  }
  {
    grpc::ClientContext ctx;
    Auth(&ctx, kAdmin);
    v1::LoadModelRequest l;
    l.set_name("ft1");
    v1::LoadModelResponse r;
    ASSERT_TRUE(admin->LoadModel(&ctx, l, &r).ok());
    EXPECT_EQ(r.blocks_loaded(), own);
    EXPECT_TRUE(r.model().loaded());
  }
  EXPECT_EQ(Post("/v1/completions", {{"model", "ft1"}, {"prompt", "Tom"}}).status, 200);
}

TEST_F(ServingTest, UnloadingALoraModelDetachesItsAdapter) {
  ASSERT_EQ(Post("/v1/completions", {{"model", "lora4"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status, 200);
  WaitIdle();
  const int before = core_->engine().stats().adapters_resident;
  EXPECT_GT(before, 0);
  auto freed = core_->UnloadModel("lora4");
  ASSERT_THAT(freed, IsOk());
  EXPECT_EQ(*freed, 0);  // its base blocks stay: other loaded models use them
  EXPECT_EQ(core_->engine().stats().adapters_resident, 0);
  EXPECT_EQ(Post("/v1/completions", {{"model", "lora4"}, {"prompt", "Tom"}}).status, 503);
  ASSERT_THAT(core_->LoadModel("lora4"), IsOk());
  EXPECT_EQ(core_->engine().stats().adapters_resident, before);
  EXPECT_EQ(Post("/v1/completions", {{"model", "lora4"}, {"prompt", "Tom"}}).status, 200);
}

}  // namespace
}  // namespace blockserve::server
