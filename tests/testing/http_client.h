// A plain HTTP/1.1 client over a loopback socket for tests: whole replies (chunked bodies
// decoded), server-sent events, and raw sockets for disconnects and slow clients.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace blockserve::testing {

inline int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline bool SendAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += n;
  }
  return true;
}

inline std::string Request(const std::string& method, const std::string& path,
                           const std::string& body, const std::string& key = "",
                           const std::string& extra_headers = "") {
  std::string r = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                               "Connection: close\r\n");
  if (!key.empty()) absl::StrAppend(&r, "Authorization: Bearer ", key, "\r\n");
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&r, "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n");
  }
  absl::StrAppend(&r, extra_headers, "\r\n", body);
  return r;
}

struct HttpReply {
  int status = 0;  // 0: no reply
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

inline HttpReply ParseReply(const std::string& raw) {
  HttpReply r;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.size() < 12) return r;
  absl::SimpleAtoi(raw.substr(9, 3), &r.status);
  size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    const size_t nl = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, nl - pos);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      r.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
    pos = nl + 2;
  }
  std::string body = raw.substr(end + 4);
  if (r.headers["transfer-encoding"] == "chunked") {
    std::string out;
    size_t p = 0;
    while (p < body.size()) {
      const size_t nl = body.find("\r\n", p);
      if (nl == std::string::npos) break;
      const size_t len = std::stoul(body.substr(p, nl - p), nullptr, 16);
      if (len == 0) break;
      out += body.substr(nl + 2, len);
      p = nl + 2 + len + 2;
    }
    body = out;
  }
  r.body = body;
  return r;
}

// Reads until the server closes (or `timeout_ms` passes without data).
inline std::string ReadAll(int fd, int timeout_ms = 30000) {
  std::string raw;
  char buf[65536];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) break;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, n);
  }
  return raw;
}

inline HttpReply Http(int port, const std::string& method, const std::string& path,
                      const std::string& body = "", const std::string& key = "",
                      const std::string& extra_headers = "") {
  const int fd = Connect(port);
  if (fd < 0) return {};
  SendAll(fd, Request(method, path, body, key, extra_headers));
  HttpReply r = ParseReply(ReadAll(fd));
  close(fd);
  return r;
}

// The `data:` payloads of a server-sent-events body, in order.
inline std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p < body.size()) {
    size_t nl = body.find('\n', p);
    if (nl == std::string::npos) nl = body.size();
    const std::string line = body.substr(p, nl - p);
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
    p = nl + 1;
  }
  return out;
}

}  // namespace blockserve::testing
