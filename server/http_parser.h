// HTTP/1.1 requests as they arrive on a connection: an incremental parser with every input
// bounded (request line and headers, header count, body bytes received and decoded), and the
// plain Request/Response values the gateway's handlers work on. No I/O here: the server
// (server/http_server.h) feeds it bytes; the fuzz target feeds it anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace blockserve::server::http {

struct Request {
  std::string method;   // "GET", "POST", ...
  std::string path;     // percent-decoded, without the query
  std::string query;    // after '?', as sent
  int minor_version = 1;  // HTTP/1.<minor>
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;     // decoded (chunked transfer coding removed)
  std::vector<std::string> params;  // route captures ({model} of /v1/models/{model})
  // Set by the server while a handler runs: whether the client has closed its connection (so
  // that work for it can stop). Null outside a handler.
  std::function<bool()> client_gone;

  // The first header `name` (lower-case), or "".
  std::string header(std::string_view name) const;
  bool has_header(std::string_view name) const;
  // Whether the client asked to keep the connection open after this request.
  bool keep_alive() const;
};

// What a handler writes to while a streamed response is produced. write() returns false once
// the client is gone (or too slow); done() ends the response.
struct DataSink {
  std::function<bool(const char* data, size_t n)> write;
  std::function<void()> done;
};

struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string content_type;
  std::string body;
  // Streaming: called again and again until it returns false (an error: the connection is
  // closed) or calls sink.done(); on_finished(true) after done(), (false) otherwise.
  std::function<bool(DataSink& sink)> provider;
  std::function<void(bool success)> on_finished;

  void set_content(std::string content, std::string type) {
    body = std::move(content);
    content_type = std::move(type);
  }
  void set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
  void set_chunked_content_provider(std::string type, std::function<bool(DataSink&)> p,
                                    std::function<void(bool)> finished) {
    content_type = std::move(type);
    provider = std::move(p);
    on_finished = std::move(finished);
  }
};

struct ParserLimits {
  size_t max_header_bytes = 16 << 10;  // request line + headers
  int max_headers = 100;
  size_t max_body_bytes = 1 << 20;     // decoded body
};

// Parses one request from the bytes given to Feed, in any pieces. States: headers, then (once
// headers_done()) the body, then complete() — or failed() with the HTTP status to answer
// (400 malformed, 413 body too large, 431 headers too large, 415 content coding, 501 transfer
// coding, 505 version) and a reason. The caller may look at the request between headers and
// body (to authenticate before reading a body) and decide not to read on.
class RequestParser {
 public:
  explicit RequestParser(const ParserLimits& limits) : limits_(limits) {}

  // Consumes bytes from `data`; returns how many were used (the rest belongs to the next
  // request on the connection). Stops consuming once complete or failed.
  size_t Feed(const char* data, size_t n);

  bool headers_done() const { return state_ > State::kHeaders; }
  bool complete() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kFailed; }
  int error_status() const { return error_status_; }
  const std::string& error() const { return error_; }
  // Whether the request announced a body (so the connection cannot be reused if it is not read).
  bool expects_body() const { return chunked_ || content_length_ > 0; }

  Request& request() { return req_; }

 private:
  enum class State { kHeaders, kBody, kChunkSize, kChunkData, kChunkDataEnd, kTrailers, kDone, kFailed };
  size_t FeedHeaders(const char* data, size_t n);
  size_t FeedChunked(const char* data, size_t n);
  bool ParseHead(std::string_view head);
  bool ParseRequestLine(std::string_view line);
  bool StartBody();
  void Fail(int status, std::string why);
  // A line of the chunked framing from `line_` once it ends in LF; false while incomplete.
  bool TakeLine(const char* data, size_t n, size_t* used, std::string* out);

  ParserLimits limits_;
  State state_ = State::kHeaders;
  Request req_;
  std::string head_;  // bytes of the request line and headers so far
  std::string line_;  // a partial line of the chunked framing
  uint64_t content_length_ = 0;
  uint64_t chunk_left_ = 0;
  size_t trailer_bytes_ = 0;
  bool chunked_ = false;
  int error_status_ = 0;
  std::string error_;
};

// "%41b" -> "Ab"; false on a malformed escape.
bool PercentDecode(std::string_view in, std::string* out);

}  // namespace blockserve::server::http
