// The fixture of the serving tests (serving_test.cc, serving_generation_test.cc,
// serving_grpc_test.cc): a zoo with stories260K, a fine-tune and a LoRA model, the serving core
// with its OpenAI gateway and gRPC server on loopback, llama2.c's reference cases, and helpers to
// call them.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "blockserve/v1/blockserve.grpc.pb.h"
#include "blockzoo/derive.h"
#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/llama2c.h"
#include "runtime/mapped_file.h"
#include "tests/testing/hf_export.h"
#include "blockzoo/importer.h"
#include "nlohmann/json.hpp"
#include "server/grpc_server.h"
#include "server/http_gateway.h"
#include "server/serving.h"
#include "tests/testing/http_client.h"
#include "tests/testing/test_util.h"

namespace blockserve::server {

using nlohmann::json;
using testing::Http;
using testing::HttpReply;
using testing::IsOk;
using testing::SseData;
namespace v1 = ::blockserve::v1;

inline constexpr char kAcme[] = "sk-acme-0123456789";
inline constexpr char kBeta[] = "sk-beta-0123456789";
inline constexpr char kTiny[] = "sk-tiny-0123456789";
inline constexpr char kAdmin[] = "sk-admin-0123456789";

inline const char* kConfig = R"({
  "engine": {"threads": 2, "max_running": 64, "kv_page_size": 16},
  "gateway": {"max_body_bytes": 65536, "read_timeout_s": 1, "http_threads": 64},
  "admin_keys": ["sk-admin-0123456789"],
  "tenants": [
    {"name": "acme", "api_keys": ["sk-acme-0123456789"], "weight": 2},
    {"name": "beta", "api_keys": ["sk-beta-0123456789"], "models": ["stories260K"],
     "max_concurrent": 64},
    {"name": "tiny", "api_keys": ["sk-tiny-0123456789"], "requests_per_second": 0.2,
     "tokens_per_minute": 100000}
  ]
})";

// Generates `max_tokens` of `model` on `text` through the core for `tenant` and returns the
// whole answer merged (tokens, text, finish reason); an empty finish reason when it stalled.
inline absl::StatusOr<Delta> GenerateAll(ServingCore& core, const TenantConfig& tenant,
                                  const std::string& model, const std::string& text,
                                  int max_tokens) {
  GenerateParams p;
  p.model = model;
  p.text = text;
  p.max_tokens = max_tokens;
  auto gen = core.Generate(tenant, p);
  if (!gen.ok()) return gen.status();
  Delta d, all;
  while (!all.done() && (*gen)->Pop(&d, std::chrono::seconds(10))) all.Append(std::move(d));
  return all;
}

struct Case {
  std::string prompt;
  std::vector<int32_t> prompt_ids, generated;
  std::string text;  // the continuation's text
};

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = testing::ModelsDir();
    if (!dir) return;
    tmp_ = new testing::TempDir();
    {
      auto zoo = blockzoo::Zoo::Open(tmp_->path(), true);
      ASSERT_THAT(zoo, IsOk());
      blockzoo::ImportOptions io;
      io.name = "stories260K";
      ASSERT_THAT(blockzoo::ImportModel(**zoo, *dir + "/stories260K/stories260K.bin", io), IsOk());
      blockzoo::DeriveOptions d;
      d.base = "stories260K";
      d.name = "ft1";
      d.top_layers = 2;
      d.rel_norm = 0.1;
      d.seed = 1;
      ASSERT_THAT(blockzoo::DeriveModel(**zoo, d), IsOk());
      blockzoo::DeriveOptions l;
      l.base = "stories260K";
      l.name = "lora4";
      l.recipe = blockzoo::DeriveOptions::Recipe::kLora;
      l.lora_rank = 4;
      l.lora_alpha = 8;
      l.lora_targets = {"wq", "wv", "w2"};
      l.rel_norm = 0.2;
      l.seed = 4;
      ASSERT_THAT(blockzoo::DeriveModel(**zoo, l), IsOk());
    }
    auto config = ParseServerConfig(kConfig, "test-config");
    ASSERT_THAT(config, IsOk());
    auto core = ServingCore::Create(tmp_->path(), *config);
    ASSERT_THAT(core, IsOk());
    core_ = core->release();
    grpc_ = new GrpcServer(core_);
    ASSERT_THAT(grpc_->Start("127.0.0.1:0"), IsOk());
    http_ = new HttpGateway(core_);
    ASSERT_THAT(http_->Start("127.0.0.1", 0), IsOk());
    const json ref = json::parse(testing::ReadFile(*dir + "/stories260K/reference.json"));
    cases_ = new std::vector<Case>();
    for (const json& c : ref["cases"]) {
      Case k;
      k.prompt_ids = c["prompt_ids"].get<std::vector<int32_t>>();
      k.generated = c["generated_ids"].get<std::vector<int32_t>>();
      const std::string cmd = c["command"];
      const size_t i = cmd.find("-i \"");
      if (i != std::string::npos) k.prompt = cmd.substr(i + 4, cmd.find('"', i + 4) - i - 4);
      std::string out = c["stdout"];
      k.text = out.substr(k.prompt.size(), out.size() - k.prompt.size() - 1);
      if (cmd.find("-t 0.0") != std::string::npos) cases_->push_back(k);
    }
  }
  static void TearDownTestSuite() {
    delete http_;
    delete grpc_;
    delete core_;
    delete tmp_;
    delete cases_;
  }
  void SetUp() override {
    if (core_ == nullptr) GTEST_SKIP() << "real models not found (../shared/models)";
  }

  static int port() { return http_->port(); }
  static HttpReply Post(const std::string& path, const json& body, const std::string& key = kAcme) {
    return Http(port(), "POST", path, body.dump(), key);
  }
  static json Body(const HttpReply& r) {
    return json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  }
  static std::unique_ptr<v1::Generation::Stub> Stub() {
    return v1::Generation::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_->port()), grpc::InsecureChannelCredentials()));
  }
  static std::unique_ptr<v1::Admin::Stub> AdminStub() {
    return v1::Admin::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_->port()), grpc::InsecureChannelCredentials()));
  }
  static void Auth(grpc::ClientContext* ctx, const std::string& key) {
    ctx->AddMetadata("authorization", "Bearer " + key);
  }
  // A zoo in `dir` holding the real stories260K and "ft", a fine-tune with its top layer its own.
  static void ZooWithFineTune(const std::string& dir) {
    auto zoo = blockzoo::Zoo::Open(dir, true);
    ASSERT_THAT(zoo, IsOk());
    blockzoo::ImportOptions io;
    io.name = "stories260K";
    const std::string bin = *testing::ModelsDir() + "/stories260K/stories260K.bin";
    ASSERT_THAT(blockzoo::ImportModel(**zoo, bin, io), IsOk());
    blockzoo::DeriveOptions d;
    d.base = "stories260K";
    d.name = "ft";
    d.top_layers = 1;
    d.rel_norm = 0.1;
    ASSERT_THAT(blockzoo::DeriveModel(**zoo, d), IsOk());
  }
  // Waits until no request is in flight (the engine has released everything).
  static void WaitIdle() {
    for (int i = 0; i < 500 && core_->in_flight() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  inline static testing::TempDir* tmp_ = nullptr;
  inline static ServingCore* core_ = nullptr;
  inline static GrpcServer* grpc_ = nullptr;
  inline static HttpGateway* http_ = nullptr;
  inline static std::vector<Case>* cases_ = nullptr;
};

}  // namespace blockserve::server
