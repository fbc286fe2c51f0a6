// An event-driven HTTP/1.1 server: one epoll thread accepts connections and reads requests
// (every connection bounded by bytes and by a deadline for the whole request, idle keep-alive
// connections costing no thread), a fixed pool of workers runs the handlers of complete
// requests and writes their responses (streamed ones in chunks, each write under a deadline).
// Thousands of slow or idle connections hold no worker; probes marked `inline` are answered on
// the event thread even while every worker is busy. TCP_NODELAY on every connection.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/status.h"
#include "server/http_parser.h"

namespace blockserve::server::http {

struct HttpServerOptions {
  ParserLimits limits;
  int threads = 128;              // handler workers
  double request_timeout_s = 10;  // from a request's first byte to its last
  double idle_timeout_s = 60;     // a keep-alive connection with no request in progress
  double write_timeout_s = 10;    // a client that takes no response bytes for this long is dropped
  int max_connections = 10000;    // past it, the connection nearest its deadline is closed
  int backlog = 4096;
};

class HttpServer {
 public:
  using Handler = std::function<void(const Request&, Response&)>;
  // Runs on the event thread when a request's headers are in, before its body is read:
  // returning false answers with `res` at once (the body is never read; the connection closes).
  using HeaderCheck = std::function<bool(const Request&, Response&)>;
  // Fills in the body of an error response the server makes itself (status already set).
  using ErrorPage = std::function<void(const Request&, Response&, const std::string& why)>;
  using Logger = std::function<void(const Request&, int status)>;

  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // `pattern`: an exact path, or a prefix ending in "{}" whose rest (non-empty, no '/') is
  // params[0]. `inline_handler`: cheap and never streaming — runs on the event thread.
  // Routes are set before Start.
  void Route(std::string method, std::string pattern, Handler handler, bool inline_handler = false);
  void OnHeaders(HeaderCheck check) { header_check_ = std::move(check); }
  void OnError(ErrorPage page) { error_page_ = std::move(page); }
  void OnLog(Logger logger) { logger_ = std::move(logger); }

  // Binds (port 0: any free port), listens and starts the threads.
  absl::Status Start(const std::string& host, int port);
  int port() const { return port_; }
  // Stops accepting, closes every connection (streams in progress see their writes fail) and
  // joins the threads. Idempotent.
  void Stop();

  int open_connections() const { return open_.load(); }

 private:
  struct Conn;
  struct RouteEntry {
    std::string method, pattern;
    bool prefix, inline_handler;
    Handler handler;
  };
  struct Task {
    std::unique_ptr<Conn> conn;
    const RouteEntry* route;
  };

  // Event thread.
  void Loop();
  void Accept();
  void OnReadable(Conn& c);
  void OnWritable(Conn& c);
  // Parses what `c` has received; dispatches a complete request. False: `c` was closed/handed on.
  bool Process(Conn& c);
  bool OnHeadersDone(Conn& c);
  void Dispatch(Conn& c);
  void Reply(Conn& c, Response& res, bool close);
  void Fail(Conn& c, int status, const std::string& why);
  bool FlushOut(Conn& c);
  void CloseConn(int fd);
  void ExpireDeadlines();
  void TakeReturned();
  void Watch(Conn& c, bool want_write);
  // Worker threads.
  void Work();
  void Serve(Task& task);
  bool WriteAll(int fd, const char* data, size_t n) const;
  bool Stream(Conn& c, Response& res, bool chunked);
  void Hand(std::unique_ptr<Conn> c, bool keep);

  // The route for `req` (its captures into req.params); null when none (`method_mismatch`:
  // the path exists for another method).
  const RouteEntry* FindRoute(Request& req, bool* method_mismatch) const;
  std::string Head(const Response& res, bool close, bool chunked) const;

  HttpServerOptions opt_;
  std::vector<RouteEntry> routes_;
  HeaderCheck header_check_;
  ErrorPage error_page_;
  Logger logger_;

  int port_ = 0;
  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  std::thread loop_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> open_{0};
  // Connections on the event thread (owned there).
  std::vector<std::unique_ptr<Conn>> conns_;  // by fd

  // The edges between the event thread and the workers.
  absl::Mutex mu_;
  absl::CondVar work_cv_;
  std::deque<Task> work_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Conn>> returned_ ABSL_GUARDED_BY(mu_);  // kept alive, from workers
  std::set<int> busy_ ABSL_GUARDED_BY(mu_);  // fds at workers (shut down by Stop)
};

}  // namespace blockserve::server::http
