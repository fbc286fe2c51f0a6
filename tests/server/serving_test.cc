// The real servers on loopback: the OpenAI gateway (HTTP/1.1 over sockets) and the gRPC
// services (the generated C++ stubs), serving stories260K and two derived models from a zoo.
// Greedy outputs equal llama2.c's reference; bad input gets its OpenAI/gRPC error and the
// server keeps serving; metrics move as requests flow.
// Generation controls (log-probabilities, echo, structured output, penalties, tokenize):
// serving_generation_test.cc; gRPC and admin: serving_grpc_test.cc.
#include "tests/server/serving_test_fixture.h"

namespace blockserve::server {
namespace {

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
      {"another tenant's model", "/v1/completions", R"({"model":"ft1","prompt":"x"})", kBeta, 404, "model_not_found"},
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
  testing::SendAll(fd, absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ",
                                    kAcme, "\r\nContent-Length: 100\r\n\r\n{\"mo"));
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status, 200);
  // The request deadline (1 s here) ends the slow request with 408; the connection closes.
  const HttpReply r = testing::ParseReply(testing::ReadAll(fd, 5000));
  EXPECT_EQ(r.status, 408);
  EXPECT_TRUE(Body(r).contains("error")) << r.body;
  close(fd);
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
  while ((*gen)->Pop(&d, std::chrono::milliseconds(100))) all.Append(std::move(d));
  // Cut by the server: an error the client sees, not a client's abort or a normal end.
  EXPECT_EQ(all.finish_reason(), "error");
  EXPECT_TRUE(all.unavailable);
  EXPECT_NE(all.error.find("drain deadline"), std::string::npos) << all.error;
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
    EXPECT_EQ(all->finish_reason(), "length") << kv;
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
    EXPECT_EQ(all->finish_reason(), "length") << profile;
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
  ZooWithFineTune(tmp.path());
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
  EXPECT_EQ(bad.status, 500) << "a failure after the request was accepted is a 5xx, not a 200";
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
  const HttpReply before = Http(port(), "GET", "/metrics", "", kAdmin);
  ASSERT_EQ(before.status, 200);
  const double n0 = std::max(0.0, MetricValue(before.body, series));
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 5}}).status, 200);
  }
  const HttpReply after = Http(port(), "GET", "/metrics", "", kAdmin);
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
