// The HTTP server alone (server/http_server.h), with routes of its own: a handler learns that
// its client went away (so that a gateway can stop work for it), and a handler that throws is
// a 500 while the server keeps serving.
#include "server/http_server.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "tests/testing/http_client.h"

namespace blockserve::server::http {
namespace {

TEST(HttpServer, AHandlerSeesItsClientGo) {
  HttpServer s(HttpServerOptions{});
  std::atomic<int> seen{-1};
  s.Route("POST", "/wait", [&](const Request& req, Response& res) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    bool gone = req.client_gone();
    while (!gone && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      gone = req.client_gone();
    }
    seen = gone;
    res.set_content("late\n", "text/plain");
  });
  ASSERT_TRUE(s.Start("127.0.0.1", 0).ok());
  // A client that stays: the handler must not think it gone (it answers after 5 s, so check
  // the flag while it waits).
  const int stay = testing::Connect(s.port());
  ASSERT_GE(stay, 0);
  testing::SendAll(stay, testing::Request("POST", "/wait", "{}"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(seen.load(), -1) << "a connected client was taken for gone";
  close(stay);  // now it goes
  for (int i = 0; i < 200 && seen.load() == -1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(seen.load(), 1);
  s.Stop();
}

TEST(HttpServer, AThrowingHandlerIsA500AndTheServerServesOn) {
  HttpServer s(HttpServerOptions{});
  s.Route("GET", "/boom", [](const Request&, Response&) { throw std::runtime_error("boom"); });
  s.Route("GET", "/ok", [](const Request&, Response& res) { res.set_content("ok\n", "text/plain"); });
  ASSERT_TRUE(s.Start("127.0.0.1", 0).ok());
  EXPECT_EQ(testing::Http(s.port(), "GET", "/boom").status, 500);
  EXPECT_EQ(testing::Http(s.port(), "GET", "/ok").body, "ok\n");
  EXPECT_EQ(testing::Http(s.port(), "GET", "/nope").status, 404);
  EXPECT_EQ(testing::Http(s.port(), "POST", "/ok").status, 405);
  s.Stop();
}

}  // namespace
}  // namespace blockserve::server::http
