// Generation controls through the real servers: log-probabilities (streamed or whole, HTTP and
// gRPC), echo and prompt scoring, structured output, penalties and logit_bias, vLLM's stop and
// length controls, best_of, and the tokenizer endpoints.
#include "runtime/constraint.h"
#include "tests/server/serving_test_fixture.h"

namespace blockserve::server {
namespace {

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
  EXPECT_EQ(Post("/tokenize", {{"model", "ft1"}, {"prompt", "x"}}, kBeta).status, 404);
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
  EXPECT_EQ(tokenize(kBeta, "ft1", &tr), grpc::StatusCode::NOT_FOUND);
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

}  // namespace
}  // namespace blockserve::server
