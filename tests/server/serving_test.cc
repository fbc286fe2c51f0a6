// The real servers on loopback: the OpenAI gateway (HTTP/1.1 over sockets) and the gRPC
// services (the generated C++ stubs), serving stories260K and two derived models from a zoo.
// Greedy outputs equal llama2.c's reference; bad input gets its OpenAI/gRPC error and the
// server keeps serving; metrics move as requests flow.
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
#include "runtime/constraint.h"
#include "server/serving.h"
#include "tests/testing/http_client.h"
#include "tests/testing/test_util.h"

namespace blockserve::server {
namespace {

using nlohmann::json;
using testing::Http;
using testing::HttpReply;
using testing::IsOk;
using testing::SseData;
namespace v1 = ::blockserve::v1;

constexpr char kAcme[] = "sk-acme-0123456789";
constexpr char kBeta[] = "sk-beta-0123456789";
constexpr char kTiny[] = "sk-tiny-0123456789";
constexpr char kAdmin[] = "sk-admin-0123456789";

const char* kConfig = R"({
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
absl::StatusOr<Delta> GenerateAll(ServingCore& core, const TenantConfig& tenant,
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
  // Waits until no request is in flight (the engine has released everything).
  static void WaitIdle() {
    for (int i = 0; i < 500 && core_->in_flight() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  static testing::TempDir* tmp_;
  static ServingCore* core_;
  static GrpcServer* grpc_;
  static HttpGateway* http_;
  static std::vector<Case>* cases_;
};

testing::TempDir* ServingTest::tmp_ = nullptr;
ServingCore* ServingTest::core_ = nullptr;
GrpcServer* ServingTest::grpc_ = nullptr;
HttpGateway* ServingTest::http_ = nullptr;
std::vector<Case>* ServingTest::cases_ = nullptr;

TEST_F(ServingTest, CompletionsEqualTheReference) {
  int checked = 0;
  for (const Case& c : *cases_) {
    if (c.prompt.empty()) continue;
    const HttpReply r = Post("/v1/completions", {{"model", "stories260K"},
                                                 {"prompt", c.prompt},
                                                 {"max_tokens", c.generated.size()},
                                                 {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = Body(r);
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["choices"][0]["text"], c.text) << c.prompt;
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["usage"]["prompt_tokens"], c.prompt_ids.size());
    EXPECT_EQ(j["usage"]["completion_tokens"], c.generated.size());
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST_F(ServingTest, StreamingGivesTheSameTextThenUsageThenDone) {
  const Case& c = (*cases_)[1];
  const HttpReply r = Post("/v1/completions", {{"model", "stories260K"},
                                               {"prompt", c.prompt},
                                               {"max_tokens", c.generated.size()},
                                               {"stream", true},
                                               {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.at("content-type"), "text/event-stream");
  const auto events = SseData(r.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json j = json::parse(events[i]);
    text += j["choices"][0]["text"].get<std::string>();
    if (!j["choices"][0]["finish_reason"].is_null()) finish = j["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, c.text);
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], c.generated.size());
  EXPECT_EQ(usage["usage"]["total_tokens"], c.generated.size() + c.prompt_ids.size());
}

TEST_F(ServingTest, ChatWithThePlainTemplateContinuesTheMessage) {
  const Case& c = (*cases_)[1];
  const HttpReply r = Post("/v1/chat/completions",
                           {{"model", "stories260K"},
                            {"messages", {{{"role", "user"}, {"content", c.prompt}}}},
                            {"max_tokens", c.generated.size()}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = Body(r);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], c.text);
  // Streamed: role first, then the same content.
  const HttpReply s = Post("/v1/chat/completions",
                           {{"model", "stories260K"},
                            {"messages", {{{"role", "user"}, {"content", c.prompt}}}},
                            {"max_tokens", c.generated.size()},
                            {"stream", true}});
  const auto events = SseData(s.body);
  ASSERT_GE(events.size(), 2u);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (i == 0) {
      EXPECT_EQ(e["choices"][0]["delta"]["role"], "assistant");
    }
    text += e["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, c.text);
}

TEST_F(ServingTest, StopStringsSeedsAndN) {
  const Case& c = (*cases_)[1];
  // "Lily" first appears in the reference continuation: the text ends right before it.
  HttpReply r = Post("/v1/completions", {{"model", "stories260K"},
                                         {"prompt", c.prompt},
                                         {"max_tokens", 60},
                                         {"stop", {"Lily", "never-there"}}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = Body(r);
  EXPECT_EQ(j["choices"][0]["text"], c.text.substr(0, c.text.find("Lily")));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  // n = 3 samples at temperature 1 with a seed: reproducible, and not all the same.
  const json req = {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", 24},
                    {"temperature", 1.0},     {"seed", 42},          {"n", 3}};
  r = Post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  j = Body(r);
  ASSERT_EQ(j["choices"].size(), 3u);
  const HttpReply again = Post("/v1/completions", req);
  EXPECT_EQ(Body(again)["choices"], j["choices"]);
  EXPECT_FALSE(j["choices"][0]["text"] == j["choices"][1]["text"] &&
               j["choices"][1]["text"] == j["choices"][2]["text"]);
  EXPECT_EQ(j["usage"]["completion_tokens"], 72);
}

TEST_F(ServingTest, ModelsAreListedPerTenantWithTheirParents) {
  HttpReply r = Http(port(), "GET", "/v1/models", "", kAcme);
  ASSERT_EQ(r.status, 200);
  json j = Body(r);
  std::map<std::string, json> by;
  for (const json& m : j["data"]) by[m["id"]] = m;
  ASSERT_EQ(by.size(), 3u);
  EXPECT_EQ(by["ft1"]["parent"], "stories260K");
  EXPECT_EQ(by["lora4"]["parent"], "stories260K");
  EXPECT_TRUE(by["lora4"]["adapter"].get<bool>());
  EXPECT_TRUE(by["stories260K"]["parent"].is_null());
  EXPECT_EQ(by["stories260K"]["max_model_len"], 512);
  r = Http(port(), "GET", "/v1/models", "", kBeta);
  j = Body(r);
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "stories260K");
  EXPECT_EQ(Http(port(), "GET", "/v1/models/ft1", "", kAcme).status, 200);
  EXPECT_EQ(Http(port(), "GET", "/v1/models/ft1", "", kBeta).status, 404);
}

struct BadCase {
  std::string what;
  std::string path, body, key;
  int status;
  std::string code;  // error.code ("" : any)
  std::string extra_headers = "";
};

TEST_F(ServingTest, BadInputGetsOpenAiErrorsAndTheServerKeepsServing) {
  const std::string ok = R"("model":"stories260K","prompt":"Once upon a time")";
  const std::vector<BadCase> cases = {
      {"malformed json", "/v1/completions", "{\"model\": ", kAcme, 400, "invalid_json"},
      {"not an object", "/v1/completions", "[1,2]", kAcme, 400, "invalid_json"},
      {"wrong type", "/v1/completions", "{" + ok + ",\"max_tokens\":\"ten\"}", kAcme, 400, "invalid_type"},
      {"wrong type temperature", "/v1/completions", "{" + ok + ",\"temperature\":[1]}", kAcme, 400, "invalid_type"},
      {"unknown field", "/v1/completions", "{" + ok + ",\"frobnicate\":1}", kAcme, 400, "unknown_parameter"},
      {"missing model", "/v1/completions", R"({"prompt":"x"})", kAcme, 400, "missing_required_parameter"},
      {"missing prompt", "/v1/completions", R"({"model":"stories260K"})", kAcme, 400, "missing_required_parameter"},
      {"unknown model", "/v1/completions", R"({"model":"nope","prompt":"x"})", kAcme, 404, "model_not_found"},
      {"max_tokens 0", "/v1/completions", "{" + ok + ",\"max_tokens\":0}", kAcme, 400, "integer_below_min_value"},
      {"max_tokens negative", "/v1/completions", "{" + ok + ",\"max_tokens\":-5}", kAcme, 400, "integer_below_min_value"},
      {"max_tokens huge", "/v1/completions", "{" + ok + ",\"max_tokens\":100000000}", kAcme, 400, "context_length_exceeded"},
      {"max_tokens beyond int", "/v1/completions", "{" + ok + ",\"max_tokens\":1e300}", kAcme, 400, "invalid_type"},
      {"prompt too long", "/v1/completions",
       json({{"model", "stories260K"}, {"prompt", std::vector<int>(600, 300)}}).dump(), kAcme, 400,
       "context_length_exceeded"},
      {"token id out of range", "/v1/completions", R"({"model":"stories260K","prompt":[1,99999]})", kAcme, 400, ""},
      {"empty prompt", "/v1/completions", R"({"model":"stories260K","prompt":[]})", kAcme, 400, ""},
      {"invalid utf-8", "/v1/completions", "{\"model\":\"stories260K\",\"prompt\":\"\xff\xfe\"}", kAcme, 400, "invalid_json"},
      {"temperature out of range", "/v1/completions", "{" + ok + ",\"temperature\":7}", kAcme, 400, ""},
      {"stream_options without stream", "/v1/completions", "{" + ok + ",\"stream_options\":{}}", kAcme, 400, ""},
      {"chat without messages", "/v1/chat/completions", R"({"model":"stories260K"})", kAcme, 400, "missing_required_parameter"},
      {"chat bad role", "/v1/chat/completions", R"({"model":"stories260K","messages":[{"role":"wizard","content":"x"}]})", kAcme, 400, ""},
      {"missing key", "/v1/completions", "{" + ok + "}", "", 401, "invalid_api_key"},
      {"wrong key", "/v1/completions", "{" + ok + "}", "sk-wrong-key-000000", 401, "invalid_api_key"},
      {"another tenant's model", "/v1/completions", R"({"model":"ft1","prompt":"x"})", kBeta, 403, "model_not_found"},
      {"admin key on the data plane", "/v1/completions", "{" + ok + "}", kAdmin, 403, ""},
      {"oversized body", "/v1/completions", "{" + ok + ",\"user\":\"" + std::string(70000, 'a') + "\"}", kAcme, 413, ""},
      {"unknown route", "/v1/engines", "{}", kAcme, 404, "unknown_url"},
      {"logprobs above 20", "/v1/completions", "{" + ok + ",\"logprobs\":21}", kAcme, 400, "integer_above_max_value"},
      {"logprobs not an integer", "/v1/completions", "{" + ok + ",\"logprobs\":true}", kAcme, 400, "invalid_type"},
      {"top_logprobs without logprobs", "/v1/chat/completions",
       R"({"model":"stories260K","messages":[{"role":"user","content":"x"}],"top_logprobs":2})", kAcme, 400, ""},
      {"top_logprobs on completions", "/v1/completions", "{" + ok + ",\"top_logprobs\":2}", kAcme, 400, "unknown_parameter"},
      {"logit_bias not an object", "/v1/completions", "{" + ok + ",\"logit_bias\":[1]}", kAcme, 400, "invalid_type"},
      {"logit_bias bad key", "/v1/completions", "{" + ok + ",\"logit_bias\":{\"abc\":1}}", kAcme, 400, ""},
      {"logit_bias out of range", "/v1/completions", "{" + ok + ",\"logit_bias\":{\"5\":101}}", kAcme, 400, ""},
      {"logit_bias token outside the vocabulary", "/v1/completions", "{" + ok + ",\"logit_bias\":{\"99999\":1}}", kAcme, 400, ""},
      {"frequency_penalty out of range", "/v1/completions", "{" + ok + ",\"frequency_penalty\":3}", kAcme, 400, ""},
  };
  for (const BadCase& c : cases) {
    const HttpReply r = Http(port(), "POST", c.path, c.body, c.key, c.extra_headers);
    EXPECT_EQ(r.status, c.status) << c.what << ": " << r.body;
    const json j = Body(r);
    ASSERT_TRUE(j.contains("error")) << c.what << ": " << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << c.what;
    EXPECT_TRUE(j["error"].contains("type") && j["error"].contains("param")) << c.what;
    if (!c.code.empty()) {
      EXPECT_EQ(j["error"]["code"], c.code) << c.what << ": " << r.body;
    }
  }
  // The key never comes back in full.
  const HttpReply wrong = Http(port(), "GET", "/v1/models", "", "sk-wrong-key-000000");
  EXPECT_EQ(wrong.body.find("sk-wrong-key-000000"), std::string::npos);
  // Still serving.
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}}).status, 200);
}

// Log-probabilities through both HTTP endpoints, streamed and whole, and through gRPC: the same
// figures everywhere, greedy tokens the most likely, the tokens' text the completion's text.
TEST_F(ServingTest, LogprobsAgreeAcrossEndpointsAndStreaming) {
  const Case& c = (*cases_)[1];
  const int n = static_cast<int>(c.generated.size());
  const json req = {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", n},
                    {"temperature", 0}, {"logprobs", 3}};
  const HttpReply r = Post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const json lp = Body(r)["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), static_cast<size_t>(n)) << r.body;
  std::string joined;
  for (int t = 0; t < n; ++t) {
    const std::string tok = lp["tokens"][t];
    EXPECT_EQ(lp["text_offset"][t], static_cast<int>(joined.size()));
    joined += tok;
    const float chosen = lp["token_logprobs"][t];
    EXPECT_LE(chosen, 0.0f);
    const json& top = lp["top_logprobs"][t];
    EXPECT_GE(top.size(), 1u);
    EXPECT_LE(top.size(), 4u);  // 3 alternatives and the chosen one (here among them)
    ASSERT_TRUE(top.contains(tok)) << top.dump();
    EXPECT_EQ(top[tok].get<float>(), chosen);
    for (const auto& [k, v] : top.items()) EXPECT_LE(v.get<float>(), chosen) << k;  // greedy
  }
  EXPECT_EQ(joined, c.text);

  // Streamed: the chunks' logprobs, put together, are the same.
  json streamed_req = req;
  streamed_req["stream"] = true;
  const HttpReply sr = Post("/v1/completions", streamed_req);
  ASSERT_EQ(sr.status, 200);
  json tokens = json::array(), logprobs = json::array(), offsets = json::array();
  for (const std::string& e : SseData(sr.body)) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    const json& l = chunk["choices"][0]["logprobs"];
    if (l.is_null()) continue;
    for (size_t t = 0; t < l["tokens"].size(); ++t) {
      tokens.push_back(l["tokens"][t]);
      logprobs.push_back(l["token_logprobs"][t]);
      offsets.push_back(l["text_offset"][t]);
    }
  }
  EXPECT_EQ(tokens, lp["tokens"]);
  EXPECT_EQ(logprobs, lp["token_logprobs"]);
  EXPECT_EQ(offsets, lp["text_offset"]);

  // gRPC: the same tokens and figures, with the alternatives.
  auto stub = Stub();
  v1::GenerateRequest g;
  g.set_model("stories260K");
  g.set_text(c.prompt);
  g.set_max_tokens(n);
  g.set_logprobs(true);
  g.set_top_logprobs(3);
  grpc::ClientContext ctx;
  Auth(&ctx, kAcme);
  v1::GenerateResponse resp;
  ASSERT_TRUE(stub->Complete(&ctx, g, &resp).ok());
  ASSERT_EQ(resp.logprobs_size(), n);
  for (int t = 0; t < n; ++t) {
    const auto& e = resp.logprobs(t);
    EXPECT_EQ(e.token().token_id(), c.generated[t]);
    EXPECT_EQ(e.token().logprob(), lp["token_logprobs"][t].get<float>());
    EXPECT_EQ(e.token().text(), lp["tokens"][t].get<std::string>());
    ASSERT_EQ(e.top_size(), 3);
    EXPECT_EQ(e.top(0).token_id(), c.generated[t]);
    EXPECT_GE(e.top(0).logprob(), e.top(1).logprob());
    EXPECT_GE(e.top(1).logprob(), e.top(2).logprob());
  }
  {  // Without logprobs, none come back.
    grpc::ClientContext ctx2;
    Auth(&ctx2, kAcme);
    g.set_logprobs(false);
    g.set_top_logprobs(0);
    ASSERT_TRUE(stub->Complete(&ctx2, g, &resp).ok());
    EXPECT_EQ(resp.logprobs_size(), 0);
  }
  {  // top_logprobs alone is an error naming the field.
    grpc::ClientContext ctx3;
    Auth(&ctx3, kAcme);
    g.set_top_logprobs(2);
    const grpc::Status st = stub->Complete(&ctx3, g, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("top_logprobs"), std::string::npos) << st.error_message();
  }

  // Chat: one entry per generated token, with its bytes and exactly top_logprobs alternatives.
  const HttpReply cr = Post("/v1/chat/completions",
                            {{"model", "stories260K"},
                             {"messages", {{{"role", "user"}, {"content", c.prompt}}}},
                             {"max_tokens", 8}, {"temperature", 0}, {"logprobs", true},
                             {"top_logprobs", 2}});
  ASSERT_EQ(cr.status, 200) << cr.body;
  const json chat = Body(cr)["choices"][0];
  const json& content = chat["logprobs"]["content"];
  ASSERT_EQ(content.size(), 8u) << cr.body;
  std::string text;
  for (const json& e : content) {
    std::string bytes;
    for (const json& b : e["bytes"]) bytes += static_cast<char>(b.get<int>());
    EXPECT_EQ(e["token"], bytes);  // ASCII here
    text += bytes;
    ASSERT_EQ(e["top_logprobs"].size(), 2u);
    EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]);
    EXPECT_EQ(e["top_logprobs"][0]["logprob"], e["logprob"]);
  }
  EXPECT_EQ(text, chat["message"]["content"]);
  // Not asked: null, as OpenAI.
  const HttpReply plain = Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 2}});
  EXPECT_TRUE(Body(plain)["choices"][0]["logprobs"].is_null());
}

// echo: the prompt comes back before the completion and, with logprobs, its tokens are scored
// (the first has none); max_tokens 0 scores the prompt alone. Scoring prompt + completion gives
// the completion's tokens exactly the log-probabilities generation gave them (a prefill row and
// a decode row of the same position are the same computation), streamed or not, HTTP or gRPC.
TEST_F(ServingTest, EchoScoresThePromptAsGenerationScoredTheTokens) {
  const Case& c = (*cases_)[1];
  const int n = static_cast<int>(c.generated.size());
  const int np = static_cast<int>(c.prompt_ids.size());
  const json req = {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", n},
                    {"temperature", 0}, {"echo", true}, {"logprobs", 2}};
  const HttpReply r = Post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const json choice = Body(r)["choices"][0];
  EXPECT_EQ(choice["text"], c.prompt + c.text);
  const json& lp = choice["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), static_cast<size_t>(np + n)) << lp.dump();
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  for (int t = 1; t < np + n; ++t) EXPECT_LE(lp["token_logprobs"][t].get<float>(), 0.0f) << t;
  EXPECT_EQ(lp["text_offset"][np], static_cast<int>(c.prompt.size()));  // ASCII: chars = bytes
  EXPECT_EQ(lp["tokens"][0], "");  // BOS: no text
  std::string prompt_again;
  for (int t = 0; t < np; ++t) {
    EXPECT_EQ(lp["text_offset"][t], static_cast<int>(prompt_again.size())) << t;
    prompt_again += lp["tokens"][t].get<std::string>();
  }
  EXPECT_EQ(prompt_again, c.prompt);

  // Score the prompt and the generated tokens together, generating nothing.
  std::vector<int32_t> all = c.prompt_ids;
  all.insert(all.end(), c.generated.begin(), c.generated.end());
  const HttpReply s0 = Post("/v1/completions", {{"model", "stories260K"}, {"prompt", all},
                                                {"max_tokens", 0}, {"echo", true}, {"logprobs", 0}});
  ASSERT_EQ(s0.status, 200) << s0.body;
  const json scored = Body(s0);
  EXPECT_EQ(scored["usage"]["completion_tokens"], 0);
  EXPECT_EQ(scored["usage"]["prompt_tokens"], np + n);
  EXPECT_EQ(scored["choices"][0]["finish_reason"], "length");
  const json& sl = scored["choices"][0]["logprobs"];
  ASSERT_EQ(sl["token_logprobs"].size(), static_cast<size_t>(np + n));
  for (int t = 1; t < np + n; ++t) {
    EXPECT_EQ(sl["token_logprobs"][t].get<float>(), lp["token_logprobs"][t].get<float>()) << t;
  }

  // Streamed: the prompt in the first chunk, the same text and figures in all.
  json streamed = req;
  streamed["stream"] = true;
  const HttpReply sr = Post("/v1/completions", streamed);
  ASSERT_EQ(sr.status, 200);
  std::string text;
  json logprobs = json::array();
  bool first = true;
  for (const std::string& e : SseData(sr.body)) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    const json& ch = chunk["choices"][0];
    if (first) {
      EXPECT_EQ(ch["text"].get<std::string>().rfind(c.prompt, 0), 0u) << e;
    }
    first = false;
    text += ch["text"].get<std::string>();
    if (ch["logprobs"].is_null()) continue;
    for (const json& v : ch["logprobs"]["token_logprobs"]) logprobs.push_back(v);
  }
  EXPECT_EQ(text, c.prompt + c.text);
  EXPECT_EQ(logprobs, lp["token_logprobs"]);

  // gRPC: prompt_logprobs in the first message, the same figures.
  auto stub = Stub();
  v1::GenerateRequest g;
  g.set_model("stories260K");
  g.set_text(c.prompt);
  g.set_max_tokens(2);
  g.set_prompt_logprobs(true);
  g.set_top_logprobs(2);
  grpc::ClientContext ctx;
  Auth(&ctx, kAcme);
  v1::GenerateResponse resp;
  ASSERT_TRUE(stub->Complete(&ctx, g, &resp).ok());
  ASSERT_EQ(resp.prompt_logprobs_size(), np - 1);
  EXPECT_EQ(resp.logprobs_size(), 0);  // only the prompt's were asked for
  for (int t = 0; t + 1 < np; ++t) {
    EXPECT_EQ(resp.prompt_logprobs(t).token().token_id(), c.prompt_ids[t + 1]);
    EXPECT_EQ(resp.prompt_logprobs(t).token().logprob(), lp["token_logprobs"][t + 1].get<float>());
    EXPECT_EQ(resp.prompt_logprobs(t).top_size(), 2);
  }
  // Without echo, max_tokens 0 stays an error (OpenAI's too).
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "x"}, {"max_tokens", 0}}).status, 400);
}

// vLLM's extensions: stop_token_ids end a generation (not in the output), min_tokens holds the
// stop tokens back, ignore_eos generates past end-of-text, repetition_penalty changes the
// output; over HTTP and gRPC.
TEST_F(ServingTest, StopTokenIdsMinTokensIgnoreEosAndRepetitionPenalty) {
  const Case& c = (*cases_)[1];
  auto complete = [&](const json& extra) {
    json req = {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", 12}, {"temperature", 0}};
    req.update(extra);
    const HttpReply r = Post("/v1/completions", req);
    EXPECT_EQ(r.status, 200) << r.body;
    return Body(r);
  };
  const int32_t t = c.generated[4];
  const int first = static_cast<int>(std::find(c.generated.begin(), c.generated.end(), t) - c.generated.begin());
  const json stopped = complete({{"stop_token_ids", {t}}});
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped["usage"]["completion_tokens"], first);
  const json held = complete({{"stop_token_ids", {t}}, {"min_tokens", first + 2}, {"logprobs", 0}});
  EXPECT_GE(held["usage"]["completion_tokens"].get<int>(), first + 2);
  // The favourite at `first` was the stop token: something else came instead.
  const json& held_lp = held["choices"][0]["logprobs"];
  EXPECT_LT(held_lp["token_logprobs"][first].get<float>(), 0.0f);
  // Stop strings count from min_tokens on: "Lily" (the 9th token or so) no longer stops it.
  const json lily = complete({{"stop", "Lily"}, {"max_tokens", 30}});
  EXPECT_EQ(lily["choices"][0]["finish_reason"], "stop");
  const json later = complete({{"stop", "Lily"}, {"max_tokens", 30}, {"min_tokens", 20}});
  EXPECT_EQ(later["choices"][0]["finish_reason"], "length");
  EXPECT_NE(later["choices"][0]["text"].get<std::string>().find("Lily"), std::string::npos);
  // End-of-text forced by logit_bias: the generation ends at once, unless ignore_eos.
  const json eos = complete({{"logit_bias", {{"2", 100}}}});
  EXPECT_EQ(eos["usage"]["completion_tokens"], 0);
  EXPECT_EQ(eos["choices"][0]["finish_reason"], "stop");
  const json past = complete({{"logit_bias", {{"2", 100}}}, {"ignore_eos", true}});
  EXPECT_EQ(past["usage"]["completion_tokens"], 12);
  EXPECT_EQ(past["choices"][0]["finish_reason"], "length");
  const json plain = complete(json::object());
  const json longer = {{"max_tokens", 60}};
  json penalised = longer;
  penalised["repetition_penalty"] = 1.8;
  EXPECT_NE(complete(penalised)["choices"][0]["text"], complete(longer)["choices"][0]["text"]);
  EXPECT_EQ(complete({{"repetition_penalty", 1.0}})["choices"][0]["text"], plain["choices"][0]["text"]);
  for (const json& bad : {json{{"min_tokens", 13}}, json{{"repetition_penalty", 0}},
                          json{{"stop_token_ids", {99999}}}, json{{"ignore_eos", 1}}}) {
    json req = {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", 12}};
    req.update(bad);
    EXPECT_EQ(Post("/v1/completions", req).status, 400) << bad.dump();
  }
  // gRPC.
  auto stub = Stub();
  v1::GenerateRequest g;
  g.set_model("stories260K");
  g.set_text(c.prompt);
  g.set_max_tokens(12);
  g.add_stop_token_ids(t);
  grpc::ClientContext ctx;
  Auth(&ctx, kAcme);
  v1::GenerateResponse resp;
  ASSERT_TRUE(stub->Complete(&ctx, g, &resp).ok());
  EXPECT_EQ(resp.token_ids_size(), first);
  EXPECT_EQ(resp.finish_reason(), "stop");
  g.mutable_sampling()->set_min_tokens(first + 2);
  grpc::ClientContext ctx2;
  Auth(&ctx2, kAcme);
  ASSERT_TRUE(stub->Complete(&ctx2, g, &resp).ok());
  EXPECT_GE(resp.token_ids_size(), first + 2);
}

// /tokenize and /detokenize (vLLM's; also under /v1): the model's tokenizer, the tenant's access.
TEST_F(ServingTest, TokenizeAndDetokenizeUseTheModelsTokenizer) {
  const Case& c = (*cases_)[1];
  for (const char* path : {"/tokenize", "/v1/tokenize"}) {
    const HttpReply r = Post(path, {{"model", "stories260K"}, {"prompt", c.prompt}});
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = Body(r);
    EXPECT_EQ(j["tokens"].get<std::vector<int32_t>>(), c.prompt_ids) << path;
    EXPECT_EQ(j["count"], c.prompt_ids.size());
    EXPECT_EQ(j["max_model_len"], 512);
  }
  const json no_bos = Body(Post("/tokenize", {{"model", "stories260K"}, {"prompt", c.prompt},
                                              {"add_special_tokens", false}}));
  EXPECT_EQ(no_bos["tokens"].get<std::vector<int32_t>>(),
            std::vector<int32_t>(c.prompt_ids.begin() + 1, c.prompt_ids.end()));
  const json back = Body(Post("/detokenize", {{"model", "stories260K"}, {"tokens", c.prompt_ids}}));
  EXPECT_EQ(back["prompt"], c.prompt);
  // A chat request's prompt: as many tokens as a chat completion counts.
  const json msgs = {{{"role", "user"}, {"content", "Tell me a story."}}};
  const json chat_tokens = Body(Post("/tokenize", {{"model", "stories260K"}, {"messages", msgs}}));
  const json chat = Body(Post("/v1/chat/completions", {{"model", "stories260K"}, {"messages", msgs}, {"max_tokens", 1}}));
  EXPECT_EQ(chat_tokens["count"], chat["usage"]["prompt_tokens"]);
  const std::vector<std::pair<std::string, json>> bad = {
      {"/tokenize", {{"model", "nope"}, {"prompt", "x"}}},
      {"/tokenize", {{"model", "stories260K"}}},
      {"/tokenize", {{"model", "stories260K"}, {"prompt", "x"}, {"frobnicate", 1}}},
      {"/detokenize", {{"model", "stories260K"}, {"tokens", {1, 99999}}}},
      {"/detokenize", {{"model", "stories260K"}, {"tokens", "abc"}}},
  };
  const std::vector<int> want = {404, 400, 400, 400, 400};
  for (size_t i = 0; i < bad.size(); ++i) {
    const HttpReply r = Post(bad[i].first, bad[i].second);
    EXPECT_EQ(r.status, want[i]) << bad[i].second.dump() << ": " << r.body;
    EXPECT_TRUE(Body(r).contains("error")) << r.body;
  }
  EXPECT_EQ(Post("/tokenize", {{"model", "ft1"}, {"prompt", "x"}}, kBeta).status, 403);
  EXPECT_EQ(Post("/tokenize", {{"model", "stories260K"}, {"prompt", "x"}}, "").status, 401);

  // gRPC: the same answers, the same access rules.
  auto stub = Stub();
  auto tokenize = [&](const std::string& key, const std::string& model, v1::TokenizeResponse* out) {
    grpc::ClientContext ctx;
    if (!key.empty()) Auth(&ctx, key);
    v1::TokenizeRequest req;
    req.set_model(model);
    req.set_text(c.prompt);
    return stub->Tokenize(&ctx, req, out).error_code();
  };
  v1::TokenizeResponse tr;
  ASSERT_EQ(tokenize(kAcme, "stories260K", &tr), grpc::StatusCode::OK);
  EXPECT_EQ(std::vector<int32_t>(tr.token_ids().begin(), tr.token_ids().end()), c.prompt_ids);
  EXPECT_EQ(tr.max_model_len(), 512);
  EXPECT_EQ(tokenize(kBeta, "ft1", &tr), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(tokenize(kAcme, "nope", &tr), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(tokenize("", "stories260K", &tr), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext ctx;
  Auth(&ctx, kAcme);
  v1::DetokenizeRequest dr;
  dr.set_model("stories260K");
  for (int32_t t : c.prompt_ids) dr.add_token_ids(t);
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub->Detokenize(&ctx, dr, &text).ok());
  EXPECT_EQ(text.text(), c.prompt);
  grpc::ClientContext ctx2;
  Auth(&ctx2, kAcme);
  dr.add_token_ids(99999);
  EXPECT_EQ(stub->Detokenize(&ctx2, dr, &text).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Structured output with the real model: guided_choice answers exactly one of the choices,
// greedy or sampled, on both endpoints and gRPC; json_object's text is always a prefix of one
// JSON object, and a whole one when the generation ends by itself.
TEST_F(ServingTest, StructuredOutputFollowsTheConstraint) {
  const std::vector<std::string> choices = {"happy", "sad", "a big red dragon"};
  std::set<std::string> seen;
  for (int seed = 0; seed < 6; ++seed) {
    json req = {{"model", "stories260K"}, {"prompt", "Lily was very"}, {"max_tokens", 20},
                {"guided_choice", choices}};
    if (seed > 0) {
      req["temperature"] = 1.0;
      req["seed"] = seed;
    }
    const HttpReply r = Post("/v1/completions", req);
    ASSERT_EQ(r.status, 200) << r.body;
    const json choice = Body(r)["choices"][0];
    EXPECT_NE(std::find(choices.begin(), choices.end(), choice["text"]), choices.end()) << choice;
    EXPECT_EQ(choice["finish_reason"], "stop");
    seen.insert(choice["text"].get<std::string>());
  }
  const json chat = Body(Post("/v1/chat/completions",
                              {{"model", "stories260K"},
                               {"messages", {{{"role", "user"}, {"content", "How did Tom feel?"}}}},
                               {"guided_choice", choices}}));
  EXPECT_NE(std::find(choices.begin(), choices.end(), chat["choices"][0]["message"]["content"]),
            choices.end()) << chat;

  auto stub = Stub();
  v1::GenerateRequest g;
  g.set_model("stories260K");
  g.set_text("Lily was very");
  g.set_max_tokens(20);
  for (const auto& c : choices) g.add_guided_choice(c);
  grpc::ClientContext ctx;
  Auth(&ctx, kAcme);
  v1::GenerateResponse resp;
  ASSERT_TRUE(stub->Complete(&ctx, g, &resp).ok());
  EXPECT_NE(std::find(choices.begin(), choices.end(), resp.text()), choices.end()) << resp.text();

  for (int seed = 0; seed < 4; ++seed) {
    json req = {{"model", "stories260K"}, {"prompt", "Once upon a time"}, {"max_tokens", 120},
                {"response_format", {{"type", "json_object"}}}};
    if (seed > 0) {
      req["temperature"] = 0.8;
      req["seed"] = seed;
    }
    const HttpReply r = Post("/v1/completions", req);
    ASSERT_EQ(r.status, 200) << r.body;
    const json choice = Body(r)["choices"][0];
    const std::string text = choice["text"];
    runtime::JsonObjectRecognizer rec;
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(rec.Feed(static_cast<unsigned char>(text[i]))) << "byte " << i << " of " << text;
    }
    if (choice["finish_reason"] == "stop") {
      EXPECT_TRUE(rec.complete()) << text;
      EXPECT_TRUE(json::parse(text, nullptr, false).is_object()) << text;
    }
  }

  const std::vector<json> bad = {
      {{"response_format", {{"type", "json_schema"}}}},
      {{"response_format", {{"type", "xml"}}}},
      {{"response_format", "json"}},
      {{"guided_choice", json::array()}},
      {{"guided_choice", {"a", ""}}},
      {{"guided_choice", {"a"}}, {"response_format", {{"type", "json_object"}}}},
      {{"response_format", {{"type", "json_object"}}}, {"ignore_eos", true}},
  };
  for (const json& extra : bad) {
    json req = {{"model", "stories260K"}, {"prompt", "x"}};
    req.update(extra);
    EXPECT_EQ(Post("/v1/completions", req).status, 400) << extra.dump();
  }
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "x"}, {"max_tokens", 2},
                                     {"response_format", {{"type", "text"}}}}).status, 200);
}

// best_of: per prompt, best_of samples run and the n with the highest mean log-probability
// per token answer (usage counts them all); the same samples asked one by one rank the same.
TEST_F(ServingTest, BestOfAnswersTheLikeliestSamples) {
  const json base = {{"model", "stories260K"}, {"prompt", "Lily liked"}, {"max_tokens", 8},
                     {"temperature", 1.2}, {"seed", 40}};
  json req = base;
  req["best_of"] = 4;
  req["n"] = 2;
  const HttpReply r = Post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = Body(r);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());  // not asked for
  // The four samples alone (sample k runs with seed + k), with their mean log-probabilities.
  std::vector<std::pair<double, std::string>> samples;
  int tokens = 0;
  for (int k = 0; k < 4; ++k) {
    json one = base;
    one["seed"] = 40 + k;
    one["logprobs"] = 0;
    const json s = Body(Post("/v1/completions", one));
    const json& lps = s["choices"][0]["logprobs"]["token_logprobs"];
    double sum = 0;
    for (const json& v : lps) sum += v.get<double>();
    samples.push_back({lps.empty() ? -1e9 : sum / lps.size(), s["choices"][0]["text"]});
    tokens += s["usage"]["completion_tokens"].get<int>();
  }
  std::set<std::string> distinct;
  for (const auto& sm : samples) distinct.insert(sm.second);
  EXPECT_GE(distinct.size(), 3u);  // the choice matters
  std::stable_sort(samples.begin(), samples.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  EXPECT_EQ(j["choices"][0]["text"], samples[0].second);
  EXPECT_EQ(j["choices"][1]["text"], samples[1].second);
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["usage"]["completion_tokens"], tokens);
  json fewer = base;
  fewer["best_of"] = 1;
  fewer["n"] = 2;
  EXPECT_EQ(Post("/v1/completions", fewer).status, 400);
  json streamed = base;
  streamed["best_of"] = 3;
  streamed["stream"] = true;
  EXPECT_EQ(Post("/v1/completions", streamed).status, 400);
}

// logit_bias and the penalties change what is generated, over both APIs.
TEST_F(ServingTest, LogitBiasAndPenaltiesSteerGeneration) {
  const Case& c = (*cases_)[1];
  const int n = static_cast<int>(c.generated.size());
  auto stub = Stub();
  auto grpc_tokens = [&](const v1::SamplingParams& sp) {
    v1::GenerateRequest g;
    g.set_model("stories260K");
    g.set_text(c.prompt);
    g.set_max_tokens(n);
    *g.mutable_sampling() = sp;
    grpc::ClientContext ctx;
    Auth(&ctx, kAcme);
    v1::GenerateResponse resp;
    EXPECT_TRUE(stub->Complete(&ctx, g, &resp).ok());
    return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
  };
  v1::GenerateRequest none;
  EXPECT_EQ(grpc_tokens(none.sampling()), c.generated);
  v1::SamplingParams forced;
  (*forced.mutable_logit_bias())[300] = 100.0f;
  EXPECT_EQ(grpc_tokens(forced), std::vector<int32_t>(n, 300));
  // A strong frequency penalty stops the reference's repetitions.
  v1::SamplingParams penalised;
  penalised.set_frequency_penalty(2.0f);
  const auto varied = grpc_tokens(penalised);
  EXPECT_NE(varied, c.generated);
  EXPECT_EQ(varied[0], c.generated[0]);  // nothing generated yet: no penalty on the first token
  // HTTP: banning the reference's first token changes the first token.
  const HttpReply r = Post("/v1/completions",
                           {{"model", "stories260K"}, {"prompt", c.prompt}, {"max_tokens", 1},
                            {"logit_bias", {{std::to_string(c.generated[0]), -100}}},
                            {"logprobs", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json lp = Body(r)["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 1u);
  EXPECT_NE(lp["top_logprobs"][0].size(), 0u);
  const HttpReply ref = Post("/v1/completions", {{"model", "stories260K"}, {"prompt", c.prompt},
                                                 {"max_tokens", 1}, {"logprobs", 0}});
  EXPECT_NE(Body(ref)["choices"][0]["logprobs"]["tokens"][0], lp["tokens"][0]);
  // The banned token was the model's favourite: its log-probability (the model's) is higher.
  EXPECT_GT(Body(ref)["choices"][0]["logprobs"]["token_logprobs"][0].get<float>(),
            lp["token_logprobs"][0].get<float>());
}

TEST_F(ServingTest, RateLimitsAnswer429WithRetryAfter) {
  // tiny: 0.2 requests per second (a burst of 1).
  const json req = {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 2}};
  const HttpReply first = Post("/v1/completions", req, kTiny);
  EXPECT_EQ(first.status, 200) << first.body;
  const HttpReply second = Post("/v1/completions", req, kTiny);
  EXPECT_EQ(second.status, 429);
  EXPECT_EQ(Body(second)["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(second.headers.count("retry-after"), 1u);
  EXPECT_EQ(Post("/v1/completions", req, kAcme).status, 200);  // others unaffected
}

TEST_F(ServingTest, ClientThatDisconnectsAbortsItsRequest) {
  WaitIdle();
  const int fd = testing::Connect(port());
  ASSERT_GE(fd, 0);
  const json req = {{"model", "stories260K"}, {"prompt", "Once"}, {"max_tokens", 500},
                    {"stream", true}};
  ASSERT_TRUE(testing::SendAll(fd, testing::Request("POST", "/v1/completions", req.dump(), kAcme)));
  char buf[256];
  ASSERT_GT(recv(fd, buf, sizeof(buf), 0), 0);  // the stream started
  EXPECT_EQ(core_->in_flight(), 1);
  close(fd);
  WaitIdle();
  EXPECT_EQ(core_->in_flight(), 0);
  const auto st = core_->engine().stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_NE(core_->RenderMetrics().find("finish_reason=\"abort\""), std::string::npos);
}

TEST_F(ServingTest, ConcurrentRequestsOfDifferentModelsEqualAlone) {
  const std::vector<std::string> models = {"stories260K", "ft1", "lora4"};
  std::map<std::string, std::string> alone;
  for (const auto& m : models) {
    alone[m] = Body(Post("/v1/completions", {{"model", m}, {"prompt", "Tom and his dog"}, {"max_tokens", 40}}))
                   ["choices"][0]["text"];
  }
  EXPECT_NE(alone["ft1"], alone["stories260K"]);
  std::vector<std::future<std::string>> got;
  for (int i = 0; i < 9; ++i) {
    got.push_back(std::async(std::launch::async, [&, i] {
      return Body(Post("/v1/completions", {{"model", models[i % 3]}, {"prompt", "Tom and his dog"},
                                           {"max_tokens", 40}}))["choices"][0]["text"]
          .get<std::string>();
    }));
  }
  for (int i = 0; i < 9; ++i) EXPECT_EQ(got[i].get(), alone[models[i % 3]]) << models[i % 3];
}

TEST_F(ServingTest, AThousandConcurrentConnections) {
  std::vector<int> fds;
  for (int i = 0; i < 1000; ++i) {
    const int fd = testing::Connect(port());
    ASSERT_GE(fd, 0) << i;
    fds.push_back(fd);
  }
  for (int fd : fds) testing::SendAll(fd, testing::Request("GET", "/health", ""));
  // Meanwhile a completion still gets through.
  auto c = std::async(std::launch::async, [&] {
    return Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status;
  });
  int ok = 0;
  for (int fd : fds) {
    ok += testing::ParseReply(testing::ReadAll(fd, 60000)).status == 200;
    close(fd);
  }
  EXPECT_EQ(ok, 1000);
  EXPECT_EQ(c.get(), 200);
}

TEST_F(ServingTest, SlowClientIsCutOffWithoutBlockingOthers) {
  const int fd = testing::Connect(port());
  ASSERT_GE(fd, 0);
  testing::SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo");
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status, 200);
  // The read timeout (1 s here) ends the slow request with an error; the connection closes.
  const HttpReply r = testing::ParseReply(testing::ReadAll(fd, 5000));
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(Body(r).contains("error")) << r.body;
  close(fd);
}

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
  EXPECT_EQ(code(kBeta, "ft1"), grpc::StatusCode::PERMISSION_DENIED);
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

TEST_F(ServingTest, DrainAbortsWhatOutlivesTheDeadlineAndRefusesNewWork) {
  // A core of its own (draining is for good).
  auto config = ParseServerConfig(R"({"engine": {"threads": 2}})", "drain-config");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp_->path(), *config);
  ASSERT_THAT(core, IsOk());
  const TenantConfig& t = (*core)->tenants().all()[0];
  GenerateParams p;
  p.model = "stories260K";
  p.text = "Once upon a time";
  p.max_tokens = 500;
  auto gen = (*core)->Generate(t, p);
  ASSERT_THAT(gen, IsOk());
  EXPECT_EQ((*core)->Drain(std::chrono::seconds(0)), 1);
  EXPECT_EQ((*core)->in_flight(), 0);
  Delta d, all;
  while ((*gen)->Pop(&d, std::chrono::milliseconds(100))) {
    all.finish_reason = d.finish_reason;
    all.completion_tokens = d.completion_tokens;
  }
  EXPECT_EQ(all.finish_reason, "abort");
  EXPECT_LT(all.completion_tokens, 500);
  EXPECT_THAT((*core)->Generate(t, p).status(),
              testing::StatusIs(absl::StatusCode::kUnavailable, "shutting down"));
}

// engine.kv_dtype reaches the blocks: a bf16-KV server holds twice the pages in the same KV
// budget and answers like the f32 one.
TEST_F(ServingTest, Bf16KvConfigHalvesPagesAndServes) {
  std::vector<std::string> tokens;
  std::vector<int> free_pages;
  for (const char* kv : {"f32", "bf16"}) {
    auto config = ParseServerConfig(
        absl::StrCat(R"({"engine": {"threads": 2, "kv_budget_mib": 1, "kv_dtype": ")", kv, R"("}})"),
        "kv-config");
    ASSERT_THAT(config, IsOk());
    auto core = ServingCore::Create(tmp_->path(), *config);
    ASSERT_THAT(core, IsOk());
    auto all = GenerateAll(**core, (*core)->tenants().all()[0], "stories260K",
                           "Once upon a time", 24);
    ASSERT_THAT(all, IsOk());
    EXPECT_EQ(all->finish_reason, "length") << kv;
    tokens.push_back(absl::StrJoin(all->tokens, " "));
    int pages = 0;
    for (const auto& i : (*core)->engine().stats().instances) {
      if (i.kind == runtime::BlockKind::kAttn) pages += i.kv_pages_used + i.kv_pages_free;
    }
    free_pages.push_back(pages);
    (*core)->Drain(std::chrono::seconds(1));
  }
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_NEAR(free_pages[1], 2 * free_pages[0], 2 * 5);  // rounding per instance
}

// engine.profile_max_batch: the blocks a request loads get measured limits (at most 512,
// against the configured 100000) and the answer is the same.
TEST_F(ServingTest, ProfileMaxBatchConfigMeasuresLoadedBlocks) {
  std::vector<std::string> tokens;
  for (bool profile : {false, true}) {
    auto config = ParseServerConfig(
        absl::StrCat(R"({"engine": {"threads": 2, "max_batch_tokens": 100000,
                                    "profile_max_batch": )",
                     profile ? "true" : "false", "}}"),
        "profile-config");
    ASSERT_THAT(config, IsOk());
    auto core = ServingCore::Create(tmp_->path(), *config);
    ASSERT_THAT(core, IsOk());
    auto all = GenerateAll(**core, (*core)->tenants().all()[0], "stories260K",
                           "Once upon a time", 16);
    ASSERT_THAT(all, IsOk());
    EXPECT_EQ(all->finish_reason, "length") << profile;
    tokens.push_back(absl::StrJoin(all->tokens, " "));
    int measured = 0;
    for (const auto& i : (*core)->engine().stats().instances) {
      if (i.loads == 0) continue;
      if (profile) {
        EXPECT_LE(i.max_batch, 512) << i.name;
        ++measured;
      } else {
        EXPECT_EQ(i.max_batch, 100000) << i.name;
      }
    }
    if (profile) {
      EXPECT_GE(measured, 12);  // stories260K's chain
    }
    (*core)->Drain(std::chrono::seconds(1));
  }
  EXPECT_EQ(tokens[1], tokens[0]);
}

// A fine-tune whose own block files are damaged after the server started: its completion
// answers with an OpenAI-style error naming the model, the base model keeps answering.
TEST_F(ServingTest, AModelWithADamagedBlockFailsAloneWithAClearError) {
  testing::TempDir tmp;
  std::string damaged_id;
  {
    auto zoo = blockzoo::Zoo::Open(tmp.path(), true);
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
  auto config = ParseServerConfig(R"({"engine": {"threads": 2},
      "tenants": [{"name": "acme", "api_keys": ["sk-acme-0123456789"]}]})", "damage-config");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp.path(), *config);
  ASSERT_THAT(core, IsOk());
  HttpGateway http(core->get());
  ASSERT_THAT(http.Start("127.0.0.1", 0), IsOk());
  {
    auto zoo = blockzoo::Zoo::Open(tmp.path(), false);
    ASSERT_THAT(zoo, IsOk());
    auto base = (*zoo)->GetManifest("stories260K");
    auto ft = (*zoo)->GetManifest("ft");
    ASSERT_THAT(ft, IsOk());
    for (const auto& e : ft->chain) {
      bool own = true;
      for (const auto& b : base->chain) own &= b.block != e.block;
      if (own) std::filesystem::resize_file((*zoo)->BlockPath(e.block), 16);
    }
  }
  auto complete = [&](const std::string& model) {
    const json body = {{"model", model}, {"prompt", "Once upon a time"}, {"max_tokens", 8}};
    return Http(http.port(), "POST", "/v1/completions", body.dump(), kAcme);
  };
  const HttpReply bad = complete("ft");
  const json err = Body(bad);
  ASSERT_TRUE(err.contains("error")) << bad.body;
  EXPECT_NE(err["error"]["message"].get<std::string>().find("model ft is unavailable"),
            std::string::npos)
      << bad.body;
  const HttpReply good = complete("stories260K");
  EXPECT_EQ(good.status, 200);
  EXPECT_EQ(Body(good)["choices"][0]["finish_reason"], "length") << good.body;
  http.Stop();
  (*core)->Drain(std::chrono::seconds(1));
}

TEST_F(ServingTest, TenantPoliciesGetTheirOwnChainVariants) {
  auto config = ParseServerConfig(R"({"tenants": [
      {"name": "strict", "api_keys": ["k-strict-000000"]},
      {"name": "loose", "api_keys": ["k-loose-0000000"], "cache_prefixes": false,
       "equivalence": {"mode": "equivalent", "threshold": 0.999}}]})", "policy-config");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp_->path(), *config);
  ASSERT_THAT(core, IsOk());
  // exact + one equivalent variant of each of the 3 models.
  EXPECT_EQ((*core)->engine().num_models(), 6u);
  const ServedModel* m = (*core)->FindModel("ft1");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->engine_model.size(), 2u);
  // No equivalence records in this zoo: the variant runs the exact chain, same tokens.
  std::vector<std::string> texts;
  for (const TenantConfig& t : (*core)->tenants().all()) {
    auto all = GenerateAll(**core, t, "ft1", "Tom and his dog", 20);
    ASSERT_THAT(all, IsOk());
    texts.push_back(all->text);
  }
  EXPECT_EQ(texts[0], texts[1]);
}

TEST_F(ServingTest, ChatUsesTheChatTemplateOfAGgufTokenizer) {
  // stories260K with its GGUF tokenizer plus a ChatML template (its vocabulary has no ChatML
  // tokens, so the markers are plain text): chat == completion of the rendered ChatML text.
  const std::string dir = *testing::ModelsDir();
  testing::TempDir tmp;
  const std::string gguf = testing::ReadFile(dir + "/stories260K-gguf/stories260K.gguf");
  auto g = blockzoo::ParseGguf(reinterpret_cast<const uint8_t*>(gguf.data()), gguf.size(), "gguf");
  ASSERT_THAT(g, IsOk());
  std::map<std::string, blockzoo::GgufValue> kv;
  for (const auto& [k, v] : g->kv) {
    if (k.rfind("tokenizer.", 0) == 0) kv[k] = v;
  }
  blockzoo::GgufValue t;
  t.type = blockzoo::GgufType::kString;
  t.s = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}";
  kv["tokenizer.chat_template"] = t;
  const std::string tok = tmp.path() + "/tok.gguf";
  std::ofstream(tok, std::ios::binary) << blockzoo::SerializeGgufMetadata(kv);
  {
    auto zoo = blockzoo::Zoo::Open(tmp.path() + "/zoo", true);
    ASSERT_THAT(zoo, IsOk());
    blockzoo::ImportOptions io;
    io.name = "chatml";
    io.tokenizer = tok;
    ASSERT_THAT(blockzoo::ImportModel(**zoo, dir + "/stories260K/stories260K.bin", io), IsOk());
  }
  auto config = ParseServerConfig(R"({"engine": {"threads": 2}})", "chat-config");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp.path() + "/zoo", *config);
  ASSERT_THAT(core, IsOk());
  HttpGateway http(core->get());
  ASSERT_THAT(http.Start("127.0.0.1", 0), IsOk());
  const HttpReply models = Http(http.port(), "GET", "/v1/models");
  EXPECT_EQ(Body(models)["data"][0]["chat_format"], "chatml");
  const json msgs = {{{"role", "system"}, {"content", "Stories."}},
                     {{"role", "user"}, {"content", "Once upon a time"}}};
  const HttpReply chat = Http(http.port(), "POST", "/v1/chat/completions",
                              json({{"model", "chatml"}, {"messages", msgs}, {"max_tokens", 30}}).dump());
  ASSERT_EQ(chat.status, 200) << chat.body;
  const std::string rendered =
      "<|im_start|>system\nStories.<|im_end|>\n<|im_start|>user\nOnce upon a time<|im_end|>\n"
      "<|im_start|>assistant\n";
  const HttpReply plain = Http(http.port(), "POST", "/v1/completions",
                               json({{"model", "chatml"}, {"prompt", rendered}, {"max_tokens", 30},
                                     {"stop", {"<|im_end|>", "<|im_start|>"}}}).dump());
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(Body(chat)["usage"], Body(plain)["usage"]);
  EXPECT_EQ(Body(chat)["choices"][0]["message"]["content"], Body(plain)["choices"][0]["text"]);
  http.Stop();
}

TEST_F(ServingTest, HfImportKeepsItsChatTemplate) {
  const std::string dir = *testing::ModelsDir();
  testing::TempDir tmp;
  auto file = runtime::MappedFile::Open(dir + "/stories260K/stories260K.bin");
  ASSERT_THAT(file, IsOk());
  auto w = blockzoo::ParseLlama2c(*file);
  ASSERT_THAT(w, IsOk());
  const std::string hf = tmp.path() + "/hf";
  ASSERT_THAT(testing::ExportHfLlama(*w, hf, 1, dir + "/stories260K/tok512.model"), IsOk());
  std::ofstream(hf + "/tokenizer_config.json")
      << R"({"chat_template": [{"name": "default", "template": "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}"}]})";
  {
    auto zoo = blockzoo::Zoo::Open(tmp.path() + "/zoo", true);
    ASSERT_THAT(zoo, IsOk());
    blockzoo::ImportOptions io;
    io.name = "hfchat";
    ASSERT_THAT(blockzoo::ImportModel(**zoo, hf, io), IsOk());
    auto m = (*zoo)->GetManifest("hfchat");
    ASSERT_THAT(m, IsOk());
    EXPECT_NE(m->chat_template.find("start_header_id"), std::string::npos);
    blockzoo::DeriveOptions d;  // a fine-tune keeps its base's template
    d.base = "hfchat";
    d.name = "hfchat-ft";
    ASSERT_THAT(blockzoo::DeriveModel(**zoo, d), IsOk());
  }
  auto core = ServingCore::Create(tmp.path() + "/zoo", ServerConfig());
  ASSERT_THAT(core, IsOk());
  EXPECT_EQ((*core)->FindModel("hfchat")->chat_format, ChatFormat::kLlama3);
  EXPECT_EQ((*core)->FindModel("hfchat-ft")->chat_format, ChatFormat::kLlama3);
  GenerateParams p;
  ASSERT_THAT((*core)->ApplyChat(*(*core)->FindModel("hfchat"), {{"user", "Hi"}}, &p), IsOk());
  EXPECT_EQ(*p.text, "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(p.stop.size(), 2u);
}

double MetricValue(const std::string& text, const std::string& series) {
  const size_t p = text.find("\n" + series + " ");
  if (p == std::string::npos) return -1;
  return std::stod(text.substr(p + series.size() + 2));
}

TEST_F(ServingTest, MetricsMoveAsRequestsFlowAndPassPromtool) {
  const std::string series =
      "blockserve_requests_total{finish_reason=\"length\",model=\"stories260K\",tenant=\"acme\"}";
  const HttpReply before = Http(port(), "GET", "/metrics");
  ASSERT_EQ(before.status, 200);
  const double n0 = std::max(0.0, MetricValue(before.body, series));
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 5}}).status, 200);
  }
  const HttpReply after = Http(port(), "GET", "/metrics");
  EXPECT_EQ(MetricValue(after.body, series), n0 + 3);
  for (const char* name :
       {"blockserve_time_to_first_token_seconds_bucket", "blockserve_inter_token_latency_seconds_count",
        "blockserve_e2e_request_latency_seconds_sum", "blockserve_num_requests_waiting",
        "blockserve_num_requests_running", "blockserve_kv_cache_usage_perc",
        "blockserve_block_batch_tokens", "blockserve_block_queue_depth", "blockserve_block_busy_ratio",
        "blockserve_blocks_resident", "blockserve_blocks_loading", "blockserve_resident_bytes",
        "blockserve_preemptions_total",
        "blockserve_adapters_resident", "blockserve_adapter_loads_total",
        "blockserve_generation_tokens_total", "blockserve_prompt_tokens_total",
        "blockserve_lora_requests_info"}) {
    EXPECT_NE(after.body.find(name), std::string::npos) << name;
  }
  // promtool (Debian's prometheus package) lints the exposition when it is installed.
  if (std::system("command -v promtool > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed (apt-get install prometheus): lint not run";
  }
  testing::TempDir tmp;
  const std::string file = tmp.path() + "/metrics.txt";
  {
    std::ofstream f(file);
    f << after.body;
  }
  const std::string cmd = "promtool check metrics < " + file + " > " + tmp.path() + "/out.txt 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << testing::ReadFile(tmp.path() + "/out.txt");
}

}  // namespace
}  // namespace blockserve::server
