#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace blockserve::server::http {

namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point After(double seconds) {
  return Clock::now() + std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

const char* Reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
rlim_t RaiseFdLimit() {
  rlimit l{};
  if (getrlimit(RLIMIT_NOFILE, &l) != 0) return 1024;
  if (l.rlim_cur < l.rlim_max) {
    l.rlim_cur = l.rlim_max;
    setrlimit(RLIMIT_NOFILE, &l);
    getrlimit(RLIMIT_NOFILE, &l);
  }
  return l.rlim_cur;
}

}  // namespace

struct HttpServer::Conn {
  int fd = -1;
  std::string in;  // received, not yet parsed
  std::unique_ptr<RequestParser> parser;
  const RouteEntry* route = nullptr;
  bool checked = false;  // the headers went through routing and the header check
  Clock::time_point deadline;
  std::string out;  // the event thread's pending output
  size_t out_off = 0;
  bool close_after = false;
  // Answered and closing for writes: what the client still sends is read and dropped for a
  // while, so that closing with unread bytes (an RST) does not destroy the answer before the
  // client has read it.
  bool lingering = false;
  size_t discarded = 0;
};

HttpServer::HttpServer(HttpServerOptions options) : opt_(std::move(options)) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(std::string method, std::string pattern, Handler handler, bool inline_handler) {
  const bool prefix = pattern.size() >= 2 && pattern.compare(pattern.size() - 2, 2, "{}") == 0;
  if (prefix) pattern.resize(pattern.size() - 2);
  routes_.push_back({std::move(method), std::move(pattern), prefix, inline_handler, std::move(handler)});
}

const HttpServer::RouteEntry* HttpServer::FindRoute(Request& req, bool* method_mismatch) const {
  *method_mismatch = false;
  for (const RouteEntry& r : routes_) {
    std::string param;
    if (r.prefix) {
      if (req.path.size() <= r.pattern.size() || req.path.compare(0, r.pattern.size(), r.pattern) != 0) continue;
      param = req.path.substr(r.pattern.size());
      if (param.find('/') != std::string::npos) continue;
    } else if (req.path != r.pattern) {
      continue;
    }
    if (r.method != req.method) {
      *method_mismatch = true;
      continue;
    }
    req.params.clear();
    if (r.prefix) req.params.push_back(std::move(param));
    return &r;
  }
  return nullptr;
}

absl::Status HttpServer::Start(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const std::string service = std::to_string(port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res) != 0 || !res) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP: cannot resolve ", host));
  }
  for (addrinfo* a = res; a && listen_fd_ < 0; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, opt_.backlog) == 0) {
      listen_fd_ = fd;
    } else {
      close(fd);
    }
  }
  freeaddrinfo(res);
  if (listen_fd_ < 0) return absl::UnavailableError(absl::StrCat("HTTP: cannot bind ", host, ":", port));
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  // Each connection is one descriptor: keep a margin for zoo files, gRPC and the rest.
  const rlim_t fds = RaiseFdLimit();
  if (static_cast<rlim_t>(opt_.max_connections) + 256 > fds) {
    opt_.max_connections = static_cast<int>(fds > 512 ? fds - 256 : fds / 2);
    spdlog::warn("HTTP: at most {} connections (open-file limit {})", opt_.max_connections, fds);
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  for (int fd : {listen_fd_, wake_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  loop_ = std::thread([this] { Loop(); });
  for (int i = 0; i < std::max(1, opt_.threads); ++i) workers_.emplace_back([this] { Work(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  if (loop_.joinable()) loop_.join();
  std::deque<Task> queued;
  {
    absl::MutexLock lock(&mu_);
    for (int fd : busy_) shutdown(fd, SHUT_RDWR);  // streams in progress end
    queued.swap(work_);
    work_cv_.SignalAll();  // under the lock: a worker between its check and its wait hears it
  }
  for (Task& t : queued) Hand(std::move(t.conn), false);
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  for (int* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

// ---- the event thread ----

void HttpServer::Loop() {
  epoll_event events[256];
  auto last_sweep = Clock::now();
  while (!stopping_) {
    const int n = epoll_wait(epoll_fd_, events, 256, 100);
    for (int i = 0; i < n && !stopping_; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd_) {
        Accept();
      } else if (fd == wake_fd_) {
        uint64_t v;
        (void)!read(wake_fd_, &v, sizeof(v));
        TakeReturned();
      } else if (fd < static_cast<int>(conns_.size()) && conns_[fd]) {
        if (events[i].events & EPOLLOUT) OnWritable(*conns_[fd]);
        if (fd < static_cast<int>(conns_.size()) && conns_[fd] &&
            (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
          OnReadable(*conns_[fd]);
        }
      }
    }
    if (Clock::now() - last_sweep > std::chrono::milliseconds(100)) {
      ExpireDeadlines();
      last_sweep = Clock::now();
    }
  }
  for (size_t fd = 0; fd < conns_.size(); ++fd) {
    if (conns_[fd]) CloseConn(static_cast<int>(fd));
  }
}

void HttpServer::Accept() {
  for (int k = 0; k < 256; ++k) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or out of descriptors (the limit keeps a margin)
    if (open_.load() >= opt_.max_connections) {
      // Full: the connection on the event thread nearest its deadline (the slowest sender or
      // the longest idle) makes room; with none, the newcomer is turned away.
      int victim = -1;
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (conns_[i] && (victim < 0 || conns_[i]->deadline < conns_[victim]->deadline)) {
          victim = static_cast<int>(i);
        }
      }
      if (victim < 0) {
        close(fd);
        continue;
      }
      CloseConn(victim);
    }
    int yes = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    if (fd >= static_cast<int>(conns_.size())) conns_.resize(fd + 1);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->deadline = After(opt_.idle_timeout_s);
    conns_[fd] = std::move(c);
    ++open_;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

void HttpServer::Watch(Conn& c, bool want_write) {
  epoll_event ev{};
  ev.events = want_write ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP);
  ev.data.fd = c.fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
}

void HttpServer::CloseConn(int fd) {
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  conns_[fd].reset();
  --open_;
}

void HttpServer::OnReadable(Conn& c) {
  char buf[64 << 10];
  const ssize_t r = recv(c.fd, buf, sizeof(buf), 0);
  if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    CloseConn(c.fd);
    return;
  }
  if (r < 0) return;
  if (c.lingering) {
    c.discarded += static_cast<size_t>(r);
    if (c.discarded > opt_.limits.max_body_bytes + (1 << 20)) CloseConn(c.fd);
    return;
  }
  c.in.append(buf, static_cast<size_t>(r));
  Process(c);
}

void HttpServer::OnWritable(Conn& c) {
  if (!FlushOut(c)) return;
  if (!c.in.empty()) Process(c);  // a pipelined request waited for this response
}

bool HttpServer::Process(Conn& c) {
  while (true) {
    if (!c.parser) {
      if (c.in.empty()) return true;
      c.parser = std::make_unique<RequestParser>(opt_.limits);
      c.checked = false;
      c.route = nullptr;
      c.deadline = After(opt_.request_timeout_s);  // the whole request, not each byte
    }
    const size_t used = c.parser->Feed(c.in.data(), c.in.size());
    c.in.erase(0, used);
    if (c.parser->failed()) {
      Fail(c, c.parser->error_status(), c.parser->error());
      return false;
    }
    if (c.parser->headers_done() && !c.checked) {
      c.checked = true;
      if (!OnHeadersDone(c)) return false;
    }
    if (!c.parser->complete()) return true;
    const int fd = c.fd;
    Dispatch(c);
    // Inline: answered here; go on with pipelined bytes once the answer is out.
    if (fd >= static_cast<int>(conns_.size()) || !conns_[fd] || conns_[fd]->parser ||
        conns_[fd]->out_off < conns_[fd]->out.size()) {
      return false;
    }
  }
}

bool HttpServer::OnHeadersDone(Conn& c) {
  Request& req = c.parser->request();
  bool mismatch = false;
  c.route = FindRoute(req, &mismatch);
  const bool body_unread = !c.parser->complete();
  if (c.route == nullptr) {
    Response res;
    res.status = mismatch ? 405 : 404;
    if (error_page_) error_page_(req, res, "");
    if (logger_) logger_(req, res.status);
    Reply(c, res, body_unread || !req.keep_alive());
    return false;
  }
  if (header_check_) {
    Response res;
    if (!header_check_(req, res)) {
      if (logger_) logger_(req, res.status);
      Reply(c, res, body_unread || !req.keep_alive());
      return false;
    }
  }
  if (body_unread && absl::EqualsIgnoreCase(req.header("expect"), "100-continue")) {
    static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    (void)!send(c.fd, kContinue, sizeof(kContinue) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  return true;
}

void HttpServer::Dispatch(Conn& c) {
  if (c.route->inline_handler) {
    Request& req = c.parser->request();
    Response res;
    c.route->handler(req, res);
    if (logger_) logger_(req, res.status);
    Reply(c, res, !req.keep_alive());
    return;
  }
  const int fd = c.fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  Task t;
  t.conn = std::move(conns_[fd]);
  t.route = t.conn->route;
  {
    absl::MutexLock lock(&mu_);
    busy_.insert(fd);
    work_.push_back(std::move(t));
    work_cv_.Signal();
  }
}

void HttpServer::Reply(Conn& c, Response& res, bool close) {
  c.out = Head(res, close, false) + res.body;
  c.out_off = 0;
  c.close_after = close;
  c.parser.reset();
  c.deadline = After(opt_.write_timeout_s);
  FlushOut(c);
}

void HttpServer::Fail(Conn& c, int status, const std::string& why) {
  Response res;
  res.status = status;
  const Request empty;
  const Request& req = c.parser ? c.parser->request() : empty;
  if (error_page_) error_page_(req, res, why);
  if (logger_) logger_(req, status);
  Reply(c, res, /*close=*/true);
}

bool HttpServer::FlushOut(Conn& c) {
  while (c.out_off < c.out.size()) {
    const ssize_t w = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      Watch(c, /*want_write=*/true);  // reads wait until this answer is out
      return false;
    }
    if (w <= 0) {
      CloseConn(c.fd);
      return false;
    }
    c.out_off += static_cast<size_t>(w);
  }
  c.out.clear();
  c.out_off = 0;
  if (c.close_after) {
    shutdown(c.fd, SHUT_WR);
    c.lingering = true;
    c.in.clear();
    c.deadline = After(std::min(2.0, opt_.request_timeout_s));
    Watch(c, /*want_write=*/false);
    return false;
  }
  c.deadline = After(opt_.idle_timeout_s);
  Watch(c, /*want_write=*/false);
  return true;
}

void HttpServer::ExpireDeadlines() {
  const auto now = Clock::now();
  for (size_t fd = 0; fd < conns_.size(); ++fd) {
    Conn* c = conns_[fd].get();
    if (c == nullptr || c->deadline > now) continue;
    if (c->parser && c->out.empty() && !c->lingering) {
      // A request started and not finished in time (a slow or stalled sender).
      Fail(*c, 408, absl::StrCat("the request was not received within ", opt_.request_timeout_s, " s"));
    } else {
      CloseConn(static_cast<int>(fd));  // idle, or not reading its answer
    }
  }
}

void HttpServer::TakeReturned() {
  std::vector<std::unique_ptr<Conn>> back;
  {
    absl::MutexLock lock(&mu_);
    back.swap(returned_);
  }
  for (auto& c : back) {
    const int fd = c->fd;
    if (fd >= static_cast<int>(conns_.size())) conns_.resize(fd + 1);
    c->deadline = After(opt_.idle_timeout_s);
    conns_[fd] = std::move(c);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    if (!conns_[fd]->in.empty()) Process(*conns_[fd]);
  }
}

// ---- workers ----

void HttpServer::Work() {
  while (true) {
    Task t;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && work_.empty()) work_cv_.Wait(&mu_);
      if (work_.empty()) return;
      t = std::move(work_.front());
      work_.pop_front();
    }
    Serve(t);
  }
}

void HttpServer::Serve(Task& task) {
  Conn& c = *task.conn;
  Request& req = c.parser->request();
  const int fd = c.fd;
  req.client_gone = [fd] {  // the peer closed (or reset): readable with nothing to read
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  };
  Response res;
  try {
    task.route->handler(req, res);
  } catch (const std::exception& e) {
    spdlog::error("http handler for {} {} failed: {}", req.method, req.path, e.what());
    res = Response{};
    res.status = 500;
    if (error_page_) error_page_(req, res, "");
  }
  bool close = !req.keep_alive() || stopping_;
  bool ok;
  if (res.provider) {
    const bool chunked = req.minor_version >= 1;
    close |= !chunked;  // HTTP/1.0: the body ends with the connection
    const std::string head = Head(res, close, chunked);
    ok = WriteAll(c.fd, head.data(), head.size()) && Stream(c, res, chunked);
  } else {
    const std::string out = Head(res, close, false) + res.body;
    ok = WriteAll(c.fd, out.data(), out.size());
  }
  if (logger_) logger_(req, res.status);
  c.parser.reset();
  Hand(std::move(task.conn), ok && !close);
}

bool HttpServer::Stream(Conn& c, Response& res, bool chunked) {
  bool done = false, alive = true;
  DataSink sink;
  sink.write = [&](const char* data, size_t n) {
    if (!alive || done) return false;
    if (n == 0) return true;
    if (!chunked) return alive = WriteAll(c.fd, data, n);
    std::string frame = absl::StrCat(absl::Hex(n), "\r\n");
    frame.append(data, n);
    frame += "\r\n";
    return alive = WriteAll(c.fd, frame.data(), frame.size());
  };
  sink.done = [&] {
    if (done) return;
    done = true;
    if (chunked && alive) alive = WriteAll(c.fd, "0\r\n\r\n", 5);
  };
  while (!done && alive) {
    if (!res.provider(sink)) alive = false;
  }
  if (res.on_finished) res.on_finished(done && alive);
  return done && alive;
}

bool HttpServer::WriteAll(int fd, const char* data, size_t n) const {
  const auto deadline = After(opt_.write_timeout_s);
  while (n > 0) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;  // the client stopped reading
    pollfd p{fd, POLLOUT, 0};
    poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
  }
  return true;
}

void HttpServer::Hand(std::unique_ptr<Conn> c, bool keep) {
  {
    absl::MutexLock lock(&mu_);
    busy_.erase(c->fd);
    if (keep && !stopping_) {
      returned_.push_back(std::move(c));
    }
  }
  if (c == nullptr) {  // back to the event thread
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    return;
  }
  close(c->fd);
  --open_;
}

std::string HttpServer::Head(const Response& res, bool close, bool chunked) const {
  std::string h = absl::StrCat("HTTP/1.1 ", res.status, " ", Reason(res.status), "\r\n");
  if (!res.content_type.empty()) absl::StrAppend(&h, "Content-Type: ", res.content_type, "\r\n");
  if (chunked) {
    h += "Transfer-Encoding: chunked\r\n";
  } else if (!res.provider) {
    absl::StrAppend(&h, "Content-Length: ", res.body.size(), "\r\n");
  }
  for (const auto& [k, v] : res.headers) absl::StrAppend(&h, k, ": ", v, "\r\n");
  h += close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
  return h;
}

}  // namespace blockserve::server::http
