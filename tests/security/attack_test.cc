// The attacks that once worked (issue 16), each run against a real server on loopback (the
// serving fixture: HTTP gateway and gRPC on a real zoo with the real model), and a
// well-behaved tenant's throughput while they run. Each case failed before its fix.
#include <sys/resource.h>

#include <chrono>
#include <fstream>

#include "tests/server/serving_test_fixture.h"

namespace blockserve::server {
namespace {

using Clock = std::chrono::steady_clock;
using testing::Connect;
using testing::ParseReply;
using testing::ReadAll;
using testing::SendAll;

// This process's resident memory (the server runs in it), bytes.
uint64_t Rss() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Reads one reply's head and as much body as has come within `ms` (the connection may stay
// open).
HttpReply ReadSome(int fd, int ms) {
  std::string raw;
  char buf[65536];
  const auto end = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) {
      if (raw.find("\r\n\r\n") != std::string::npos) break;
      continue;
    }
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, n);
    const size_t head = raw.find("\r\n\r\n");
    const HttpReply r = ParseReply(raw);
    if (head != std::string::npos && r.headers.count("content-length") &&
        raw.size() - head - 4 >= std::stoul(r.headers.at("content-length"))) {
      break;  // one whole reply
    }
  }
  return ParseReply(raw);
}

class AttackTest : public ServingTest {
 protected:
  // `n` sequential short completions of the well-behaved tenant; seconds they took.
  static double WellBehaved(int n) {
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      const HttpReply r = Post("/v1/completions", {{"model", "stories260K"},
                                                   {"prompt", "Once upon a time"},
                                                   {"max_tokens", 16}});
      EXPECT_EQ(r.status, 200) << r.body;
    }
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }
};

// With no kv_budget_mib (the default config) the KV cache is still bounded — by a budget
// derived from max_running and the model (scheduler::DefaultKvBudget) — and finished
// requests' cached prefixes are evicted when new requests need the room: many distinct
// prompts later every attn instance holds at most its share, and requests still complete.
TEST_F(AttackTest, TheKvCacheIsBoundedWithoutAConfiguredBudget) {
  auto config = ParseServerConfig(R"({"engine": {"threads": 2, "max_running": 1}})", "kv-default");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp_->path(), *config);
  ASSERT_THAT(core, IsOk());
  auto pages = [&](bool used_only) {
    int n = 0;
    for (const auto& i : (*core)->engine().stats().instances) {
      if (i.kind != runtime::BlockKind::kAttn) continue;
      EXPECT_GE(i.kv_pages_free, 0) << i.name << ": unbounded";
      n += i.kv_pages_used + (used_only ? 0 : i.kv_pages_free);
    }
    return n;
  };
  const int cap = pages(false);
  // 2 x 1 running x 512 tokens, in pages of 16: 64 pages of each of stories260K's 5 attn
  // blocks, split with the fine-tunes' own attn blocks in the test zoo.
  EXPECT_GT(cap, 0);
  EXPECT_LE(cap, 5 * 64);
  for (int i = 0; i < 24; ++i) {
    auto all = GenerateAll(**core, (*core)->tenants().all()[0], "stories260K",
                           absl::StrCat("Story ", i, ": once upon a time there was a little girl "
                                        "named Lily who loved to play in the park with her dog"),
                           16);
    ASSERT_THAT(all, IsOk());
    EXPECT_EQ(all->finish_reason(), "length") << i;
    EXPECT_LE(pages(true), cap);
  }
  EXPECT_EQ(pages(false), cap);
  (*core)->Drain(std::chrono::seconds(1));
}

// A chunked body without a key is answered 401 as soon as the headers are in, and not read: the
// client has sent 1 MiB of an announced endless body when the answer comes, and the server's
// memory has not grown by it. With a key, a chunked body past max_body_bytes is a 413 at the
// limit; a compressed body is a 415 (never inflated).
TEST_F(AttackTest, BodiesAreBoundedAndUnauthenticatedOnesNeverRead) {
  const uint64_t rss0 = Rss();
  const std::string chunk = absl::StrCat(absl::Hex(64 << 10), "\r\n", std::string(64 << 10, 'x'), "\r\n");
  for (const char* key : {"", kAcme}) {
    const int fd = Connect(port());
    ASSERT_GE(fd, 0);
    std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n";
    if (*key) absl::StrAppend(&head, "Authorization: Bearer ", key, "\r\n");
    ASSERT_TRUE(SendAll(fd, head + "\r\n"));
    int sent = 0;
    for (; sent < 256; ++sent) {  // up to 16 MiB; the server stops it long before
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 0) > 0) break;  // an answer (or a close) has come
      if (!SendAll(fd, chunk)) break;
    }
    const HttpReply r = ReadSome(fd, 2000);
    EXPECT_EQ(r.status, *key ? 413 : 401) << "key '" << key << "'";
    // The server stops reading and closes: sends fail long before the 16 MiB (what was sent
    // is what the kernels' socket buffers took).
    EXPECT_LT(sent, 256) << "the server kept reading";
    close(fd);
  }
  const int fd = Connect(port());
  SendAll(fd, testing::Request("POST", "/v1/completions", std::string(100, '\x1f'), kAcme,
                               "Content-Encoding: gzip\r\n"));
  EXPECT_EQ(ParseReply(ReadAll(fd, 2000)).status, 415);
  close(fd);
  EXPECT_LT(Rss(), rss0 + (32 << 20));
}

// Two thousand connections that send a header byte now and then hold no worker: /health and a
// completion are answered while they are open, and each slow request ends with a 408 at its
// deadline (1 s here), not after each byte.
TEST_F(AttackTest, SlowClientsHoldNoWorkerAndTimeOutWhole) {
  rlimit l{};
  getrlimit(RLIMIT_NOFILE, &l);
  const int n = static_cast<int>(std::min<rlim_t>(2000, l.rlim_cur / 2 - 64));
  ASSERT_GE(n, 200) << "open-file limit " << l.rlim_cur;
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    const int fd = Connect(port());
    ASSERT_GE(fd, 0);
    SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHo");
    fds.push_back(fd);
  }
  const auto t0 = Clock::now();
  EXPECT_EQ(Http(port(), "GET", "/health").status, 200);
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 4}}).status, 200);
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(900)) << "answered only after the slow clients' deadline";
  // One byte every 300 ms: the deadline is for the whole request.
  for (int step = 0; step < 3; ++step) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (int i = 0; i < 10; ++i) SendAll(fds[i], "s");
  }
  int timed_out = 0;
  for (int fd : fds) {
    timed_out += ParseReply(ReadAll(fd, 3000)).status == 408;
    close(fd);
  }
  EXPECT_EQ(timed_out, n);
}

// The well-behaved tenant keeps at least half its throughput while a thousand slow clients
// hold connections open and unauthenticated clients send 100 bodies a second (attackers in this
// process, on the same cores).
TEST_F(AttackTest, AWellBehavedTenantKeepsItsThroughputUnderAttack) {
  const double alone = WellBehaved(20);
  std::atomic<bool> stop{false};
  std::thread slow([&] {
    std::vector<int> fds;
    while (!stop) {
      if (fds.size() < 1000) {
        const int fd = Connect(port());
        if (fd >= 0) {
          SendAll(fd, "GET /v1/models HTTP/1.1\r\n");
          fds.push_back(fd);
        }
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    for (int fd : fds) close(fd);
  });
  std::thread flood([&] {  // 100 unauthenticated 60 kB bodies a second
    const std::string body(60000, 'x');
    while (!stop) {
      const auto next = Clock::now() + std::chrono::milliseconds(10);
      const int fd = Connect(port());
      if (fd < 0) continue;
      SendAll(fd, testing::Request("POST", "/v1/chat/completions", body, "sk-nope-00000000"));
      ReadAll(fd, 1000);
      close(fd);
      std::this_thread::sleep_until(next);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double attacked = WellBehaved(20);
  stop = true;
  slow.join();
  flood.join();
  std::printf("20 completions: %.3f s alone, %.3f s under attack (%.0f%% throughput)\n", alone,
              attacked, 100 * alone / attacked);
  EXPECT_LT(attacked, 2 * alone + 0.1);  // at least half the throughput (and 100 ms of noise)
}

// Limits before work: a prompt longer than the context by its bytes alone is refused without
// being encoded, and a tenant with an empty request bucket gets a 429 for it, not a 400.
TEST_F(AttackTest, LimitsComeBeforeTokenizing) {
  const std::string huge(60000, 'a');  // one 60,000-letter word: the worst case for BPE
  const HttpReply r = Post("/v1/completions", {{"model", "stories260K"}, {"prompt", huge}, {"max_tokens", 4}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Body(r)["error"]["code"], "context_length_exceeded") << r.body;
  // Tenant "tiny": 0.2 requests/s; the first takes the bucket's only token.
  const json ok = {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 2}};
  HttpReply first = Post("/v1/completions", ok, kTiny);
  if (first.status == 429) {  // another test used the bucket: wait for it to refill
    std::this_thread::sleep_for(std::chrono::seconds(5));
    first = Post("/v1/completions", ok, kTiny);
  }
  EXPECT_EQ(first.status, 200);
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", huge}}, kTiny).status, 429);
}

// Lists are bounded in both APIs before any work grows with them (a constraint's tables, stop
// strings matched on the output stage): past a bound is a 400 / INVALID_ARGUMENT naming the
// field, and a gRPC message past the body limit is refused by size.
TEST_F(AttackTest, EveryListIsBoundedInBothApis) {
  json many_stops = json::array(), many_choices = json::array();
  for (int i = 0; i < 17; ++i) many_stops.push_back(absl::StrCat("s", i));
  for (int i = 0; i < 300; ++i) many_choices.push_back(absl::StrCat("c", i));
  const json base = {{"model", "stories260K"}, {"prompt", "Tom"}, {"max_tokens", 2}};
  for (const auto& [field, value] : std::vector<std::pair<std::string, json>>{
           {"stop", many_stops}, {"guided_choice", many_choices},
           {"stop", json::array({std::string(300, 'x')})}}) {
    json body = base;
    body[field] = value;
    const HttpReply r = Post("/v1/completions", body);
    EXPECT_EQ(r.status, 400) << field << ": " << r.body;
    EXPECT_NE(r.body.find("'" + field + "'"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("at most"), std::string::npos) << r.body;
  }
  json prompts = json::array();
  for (int i = 0; i < 17; ++i) prompts.push_back("x");
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K"}, {"prompt", prompts}}).status, 400);
  auto stub = Stub();
  auto complete = [&](const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    Auth(&ctx, kAcme);
    v1::GenerateResponse resp;
    return stub->Complete(&ctx, req, &resp);
  };
  v1::GenerateRequest req;
  req.set_model("stories260K");
  req.set_text("Tom");
  req.set_max_tokens(2);
  for (int i = 0; i < 17; ++i) req.add_stop(absl::StrCat("s", i));
  grpc::Status st = complete(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'stop' takes at most 16"), std::string::npos) << st.error_message();
  req.clear_stop();
  for (int i = 0; i < 20000; ++i) req.add_stop("stop");  // ~120 kB: past the 64 kB limit
  EXPECT_EQ(complete(req).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  req.clear_stop();
  EXPECT_TRUE(complete(req).ok());
}

// A tenant cannot tell another tenant's model from a missing one: same status, same body but
// for the name.
TEST_F(AttackTest, OtherTenantsModelsLookMissing) {
  const HttpReply theirs = Post("/v1/completions", {{"model", "ft1"}, {"prompt", "x"}}, kBeta);
  const HttpReply missing = Post("/v1/completions", {{"model", "zz9"}, {"prompt", "x"}}, kBeta);
  EXPECT_EQ(theirs.status, 404);
  EXPECT_EQ(missing.status, 404);
  std::string a = theirs.body, b = missing.body;
  a.replace(a.find("ft1"), 3, "zz9");
  EXPECT_EQ(a, b);
  EXPECT_EQ(Http(port(), "GET", "/v1/models/ft1", "", kBeta).body,
            [&] { std::string s = Http(port(), "GET", "/v1/models/zz9", "", kBeta).body;
                  s.replace(s.find("zz9"), 3, "ft1"); return s; }());
}

// JSON that a parser could choke on is a 400 with an OpenAI error, never a 500 or a crash.
TEST_F(AttackTest, HostileJsonIsA400) {
  for (const std::string& body :
       {std::string(R"({"model":"stories260K","prompt":"x","temperature":1e400})"),
        std::string(R"({"model":"stories260K","prompt":"x","max_tokens":-1e400})"),
        std::string(R"({"model":"stories260K","prompt":"x","metadata":)") + std::string(10000, '[') +
            std::string(10000, ']') + "}"}) {
    const HttpReply r = Http(port(), "POST", "/v1/completions", body, kAcme);
    EXPECT_EQ(r.status, 400) << body.substr(0, 80) << ": " << r.body;
    EXPECT_EQ(Body(r)["error"]["code"], "invalid_json") << r.body;
  }
}

// HTTP framing: many requests on one kept-alive connection, pipelined requests answered in
// order, request smuggling shapes refused, Expect: 100-continue honoured.
TEST_F(AttackTest, HttpFramingIsStrict) {
  const int fd = Connect(port());
  ASSERT_GE(fd, 0);
  const std::string get = absl::StrCat("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ", kAcme, "\r\n\r\n");
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(SendAll(fd, get));
    const HttpReply r = ReadSome(fd, 2000);
    ASSERT_EQ(r.status, 200) << "request " << i << " on one connection";
    ASSERT_EQ(r.headers.at("connection"), "keep-alive");
  }
  ASSERT_TRUE(SendAll(fd, get + get + "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"));
  const std::string raw = ReadAll(fd, 2000);
  EXPECT_EQ(std::count(raw.begin(), raw.end(), 'H') >= 3, true);
  EXPECT_NE(raw.rfind("ok\n"), std::string::npos);
  EXPECT_EQ(raw.find("HTTP/1.1 200", raw.find("HTTP/1.1 200", raw.find("HTTP/1.1 200") + 1) + 1) != std::string::npos, true);
  close(fd);
  auto raw_status = [&](const std::string& request) {
    const int c = Connect(port());
    SendAll(c, request);
    const int s = ParseReply(ReadAll(c, 2000)).status;
    close(c);
    return s;
  };
  const std::string auth = absl::StrCat("Authorization: Bearer ", kAcme, "\r\n");
  EXPECT_EQ(raw_status("POST /v1/completions HTTP/1.1\r\n" + auth +
                       "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400);
  EXPECT_EQ(raw_status("POST /v1/completions HTTP/1.1\r\n" + auth + "Transfer-Encoding: gzip\r\n\r\n"), 501);
  EXPECT_EQ(raw_status("POST /v1/completions HTTP/1.1\r\n" + auth +
                       "Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"), 400);
  EXPECT_EQ(raw_status("GET /health HTTP/2.0\r\n\r\n"), 505);
  EXPECT_EQ(raw_status("GET /health HTTP/1.1\r\nX: " + std::string(40000, 'a') + "\r\n\r\n"), 431);
  // Expect: 100-continue: the interim answer comes before the body is sent.
  const int e = Connect(port());
  const std::string body = R"({"model":"stories260K","prompt":"Tom","max_tokens":2})";
  SendAll(e, absl::StrCat("POST /v1/completions HTTP/1.1\r\n", auth, "Connection: close\r\n",
                          "Expect: 100-continue\r\nContent-Length: ", body.size(), "\r\n\r\n"));
  EXPECT_EQ(ReadSome(e, 1000).status, 100);
  SendAll(e, body);
  const std::string rest = ReadAll(e, 5000);
  EXPECT_NE(rest.find("HTTP/1.1 200"), std::string::npos) << rest;
  close(e);
}

// One damaged manifest takes down that model alone: the server starts, serves the others,
// answers for the damaged one as for a missing model, and names the file and the reason in the
// admin API (and the log).
TEST_F(AttackTest, ADamagedManifestTakesDownOnlyItsModel) {
  testing::TempDir tmp;
  ZooWithFineTune(tmp.path());
  const std::string manifest = (*blockzoo::Zoo::Open(tmp.path(), false))->ManifestPath("ft");
  std::ofstream(manifest, std::ios::trunc) << "{\"name\": \"ft\", \"chain\": [";
  auto config = ParseServerConfig(R"({"engine": {"threads": 2}, "admin_keys": ["sk-admin-0123456789"],
      "tenants": [{"name": "acme", "api_keys": ["sk-acme-0123456789"]}]})", "manifest-config");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp.path(), *config);
  ASSERT_THAT(core, IsOk());
  ASSERT_EQ((*core)->unavailable().count("ft"), 1u);
  EXPECT_NE((*core)->unavailable().at("ft").find("ft.json"), std::string::npos)
      << (*core)->unavailable().at("ft");
  auto ok = GenerateAll(**core, (*core)->tenants().all()[0], "stories260K", "Once upon a time", 8);
  ASSERT_THAT(ok, IsOk());
  EXPECT_EQ(ok->finish_reason(), "length");
  auto gone = GenerateAll(**core, (*core)->tenants().all()[0], "ft", "Once upon a time", 8);
  EXPECT_THAT(gone.status(), testing::StatusIs(absl::StatusCode::kNotFound, "does not exist"));
  GrpcServer grpc(core->get());
  ASSERT_THAT(grpc.Start("127.0.0.1:0"), IsOk());
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc.port()),
                                                      grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  Auth(&ctx, kAdmin);
  v1::ResidencyResponse r;
  ASSERT_TRUE(admin->Residency(&ctx, v1::ResidencyRequest(), &r).ok());
  ASSERT_EQ(r.unavailable_size(), 1);
  EXPECT_EQ(r.unavailable(0).name(), "ft");
  EXPECT_NE(r.unavailable(0).reason().find("ft.json"), std::string::npos) << r.unavailable(0).reason();
  (*core)->Drain(std::chrono::seconds(1));
}

// With tenants configured, /metrics (every tenant's names and counts) needs an admin or
// metrics key; on a port of its own (Prometheus' convention) it needs none and leaves the API
// port. gRPC reflection is off unless asked for.
TEST_F(AttackTest, MetricsAndReflectionAreNotOpenToAnyone) {
  EXPECT_EQ(Http(port(), "GET", "/metrics").status, 401);
  EXPECT_EQ(Http(port(), "GET", "/metrics", "", kAcme).status, 403);
  const HttpReply admin = Http(port(), "GET", "/metrics", "", kAdmin);
  EXPECT_EQ(admin.status, 200);
  EXPECT_NE(admin.body.find("blockserve_"), std::string::npos);
  // A metrics key reads /metrics and nothing else.
  auto config = ParseServerConfig(R"({"engine": {"threads": 1},
      "gateway": {"metrics_keys": ["sk-prom-0000000000"]},
      "tenants": [{"name": "acme", "api_keys": ["sk-acme-0123456789"]}]})", "metrics-key");
  ASSERT_THAT(config, IsOk());
  auto core = ServingCore::Create(tmp_->path(), *config);
  ASSERT_THAT(core, IsOk());
  {
    HttpGateway http(core->get());
    ASSERT_THAT(http.Start("127.0.0.1", 0), IsOk());
    EXPECT_EQ(Http(http.port(), "GET", "/metrics", "", "sk-prom-0000000000").status, 200);
    EXPECT_EQ(Http(http.port(), "GET", "/v1/models", "", "sk-prom-0000000000").status, 403);
  }
  // A port of its own.
  config = ParseServerConfig(R"({"engine": {"threads": 1}, "gateway": {"metrics_port": 0},
      "tenants": [{"name": "acme", "api_keys": ["sk-acme-0123456789"]}]})", "metrics-port");
  ASSERT_THAT(config, IsOk());
  auto core2 = ServingCore::Create(tmp_->path(), *config);
  ASSERT_THAT(core2, IsOk());
  {
    HttpGateway http(core2->get());
    ASSERT_THAT(http.Start("127.0.0.1", 0), IsOk());
    ASSERT_GT(http.metrics_port(), 0);
    EXPECT_EQ(Http(http.metrics_port(), "GET", "/metrics").status, 200);
    EXPECT_EQ(Http(http.metrics_port(), "GET", "/health").status, 200);
    EXPECT_EQ(Http(http.metrics_port(), "GET", "/v1/models", "", kAcme).status, 404);
    EXPECT_EQ(Http(http.port(), "GET", "/metrics", "", kAcme).status, 404);
  }
  // Reflection: the fixture's server has tenants, so the service is not there.
  grpc::GenericStub stub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_->port()),
                                             grpc::InsecureChannelCredentials()));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  // An unknown method is refused when its headers arrive: no message needs to be sent.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(10);
  auto wait = [&](intptr_t want) {  // one operation at a time, as the async API requires
    void* tag = nullptr;
    bool ok = false;
    while (tag != reinterpret_cast<void*>(want) &&
           cq.AsyncNext(&tag, &ok, deadline) == grpc::CompletionQueue::GOT_EVENT) {
    }
    return tag == reinterpret_cast<void*>(want);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(wait(1));
  call->WritesDone(reinterpret_cast<void*>(2));
  ASSERT_TRUE(wait(2));
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(3));
  ASSERT_TRUE(wait(3)) << "no answer from the gRPC server";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED) << st.error_message();
}

}  // namespace
}  // namespace blockserve::server
