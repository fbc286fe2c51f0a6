#include "server/http_parser.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace blockserve::server::http {

namespace {

constexpr size_t kMaxChunkLine = 1024;  // "<hex size>[;extensions]\r\n"

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || std::strchr("!#$%&'*+-.^_`|~", c);
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return "";
}

bool Request::has_header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return true;
  }
  return false;
}

bool Request::keep_alive() const {
  const std::string c = absl::AsciiStrToLower(header("connection"));
  if (absl::StrContains(c, "close")) return false;
  return minor_version >= 1 || absl::StrContains(c, "keep-alive");
}

bool PercentDecode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

void RequestParser::Fail(int status, std::string why) {
  state_ = State::kFailed;
  error_status_ = status;
  error_ = std::move(why);
}

size_t RequestParser::Feed(const char* data, size_t n) {
  size_t used = 0;
  while (used < n && state_ != State::kDone && state_ != State::kFailed) {
    const size_t before = used;
    switch (state_) {
      case State::kHeaders: used += FeedHeaders(data + used, n - used); break;
      case State::kBody: {
        const size_t take = static_cast<size_t>(
            std::min<uint64_t>(n - used, content_length_ - req_.body.size()));
        req_.body.append(data + used, take);
        used += take;
        if (req_.body.size() == content_length_) state_ = State::kDone;
        break;
      }
      default: used += FeedChunked(data + used, n - used); break;
    }
    if (used == before && state_ != State::kDone && state_ != State::kFailed) break;
  }
  return used;
}

size_t RequestParser::FeedHeaders(const char* data, size_t n) {
  // Leading empty lines before a request are ignored (RFC 9112 2.2).
  size_t skip = 0;
  while (head_.empty() && skip < n && (data[skip] == '\r' || data[skip] == '\n')) ++skip;
  const size_t old = head_.size();
  const size_t room = limits_.max_header_bytes + 4 - std::min(head_.size(), limits_.max_header_bytes + 4);
  head_.append(data + skip, std::min(n - skip, room));
  // The end of the head: an empty line (CRLF CRLF, or bare LF LF).
  const size_t from = old >= 3 ? old - 3 : 0;
  size_t end = std::string::npos, end_len = 0;
  for (size_t i = from; i < head_.size(); ++i) {
    if (head_[i] != '\n') continue;
    if (i >= 1 && head_[i - 1] == '\n') { end = i - 1; end_len = 2; break; }
    if (i >= 2 && head_[i - 1] == '\r' && head_[i - 2] == '\n') { end = i - 2; end_len = 3; break; }
  }
  if (end == std::string::npos) {
    if (head_.size() > limits_.max_header_bytes) {
      Fail(431, absl::StrCat("request line and headers exceed ", limits_.max_header_bytes, " bytes"));
    }
    return skip + (head_.size() - old);
  }
  const size_t head_end = end + end_len;  // bytes of head_ that belong to the head
  if (head_end > limits_.max_header_bytes + 4) {
    Fail(431, absl::StrCat("request line and headers exceed ", limits_.max_header_bytes, " bytes"));
    return n;
  }
  const size_t consumed = skip + (head_end - old);
  head_.resize(end);
  if (ParseHead(head_)) StartBody();
  return consumed;
}

bool RequestParser::ParseRequestLine(std::string_view line) {
  const size_t a = line.find(' ');
  const size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  if (b == std::string_view::npos || line.find(' ', b + 1) != std::string_view::npos) {
    Fail(400, "malformed request line");
    return false;
  }
  req_.method = std::string(line.substr(0, a));
  const std::string_view target = line.substr(a + 1, b - a - 1);
  const std::string_view version = line.substr(b + 1);
  if (req_.method.empty() || !std::all_of(req_.method.begin(), req_.method.end(), IsTokenChar)) {
    Fail(400, "malformed method");
    return false;
  }
  if (version.size() != 8 || version.substr(0, 7) != "HTTP/1." || version[7] < '0' || version[7] > '9') {
    Fail(version.substr(0, 5) == "HTTP/" ? 505 : 400, "unsupported HTTP version");
    return false;
  }
  req_.minor_version = version[7] - '0';
  if (target.empty() || target[0] != '/') {
    Fail(400, "request target must be an absolute path");
    return false;
  }
  const size_t q = target.find('?');
  if (q != std::string_view::npos) req_.query = std::string(target.substr(q + 1));
  if (!PercentDecode(target.substr(0, q), &req_.path)) {
    Fail(400, "malformed percent-encoding in the path");
    return false;
  }
  return true;
}

bool RequestParser::ParseHead(std::string_view head) {
  size_t pos = head.find('\n');
  if (!ParseRequestLine(Trim(head.substr(0, pos)))) return false;
  while (pos != std::string_view::npos && pos + 1 < head.size()) {
    const size_t next = head.find('\n', pos + 1);
    std::string_view line = head.substr(pos + 1, next == std::string_view::npos ? next : next - pos - 1);
    pos = next;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (line[0] == ' ' || line[0] == '\t') {
      Fail(400, "obsolete header line folding");
      return false;
    }
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos ||
        !std::all_of(line.begin(), line.begin() + colon, IsTokenChar)) {
      Fail(400, "malformed header line");
      return false;
    }
    if (static_cast<int>(req_.headers.size()) >= limits_.max_headers) {
      Fail(431, absl::StrCat("more than ", limits_.max_headers, " headers"));
      return false;
    }
    req_.headers.emplace_back(absl::AsciiStrToLower(std::string(line.substr(0, colon))),
                              std::string(Trim(line.substr(colon + 1))));
  }
  return true;
}

bool RequestParser::StartBody() {
  std::string length;
  int lengths = 0;
  std::string coding;
  for (const auto& [k, v] : req_.headers) {
    if (k == "content-length") {
      if (lengths++ > 0 && v != length) {
        Fail(400, "conflicting Content-Length headers");
        return false;
      }
      length = v;
    } else if (k == "transfer-encoding") {
      coding += (coding.empty() ? "" : ",") + absl::AsciiStrToLower(v);
    } else if (k == "content-encoding") {
      const std::string c = absl::AsciiStrToLower(v);
      if (c != "identity") {
        Fail(415, absl::StrCat("Content-Encoding '", v, "' is not accepted; send the body uncompressed"));
        return false;
      }
    }
  }
  if (!coding.empty()) {
    if (coding != "chunked") {
      Fail(501, absl::StrCat("Transfer-Encoding '", coding, "' is not supported"));
      return false;
    }
    if (lengths > 0) {
      Fail(400, "both Content-Length and Transfer-Encoding");
      return false;
    }
    chunked_ = true;
    state_ = State::kChunkSize;
    return true;
  }
  if (lengths > 0) {
    if (length.empty() || length.size() > 19 ||
        !std::all_of(length.begin(), length.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      Fail(400, "malformed Content-Length");
      return false;
    }
    content_length_ = std::stoull(length);
    if (content_length_ > limits_.max_body_bytes) {
      Fail(413, absl::StrCat("the body is ", content_length_, " bytes; at most ",
                             limits_.max_body_bytes, " are accepted"));
      return false;
    }
    req_.body.reserve(static_cast<size_t>(content_length_));
  }
  state_ = content_length_ > 0 ? State::kBody : State::kDone;
  return true;
}

bool RequestParser::TakeLine(const char* data, size_t n, size_t* used, std::string* out) {
  const char* nl = static_cast<const char*>(std::memchr(data, '\n', n));
  const size_t take = nl ? static_cast<size_t>(nl - data) + 1 : n;
  if (line_.size() + take > kMaxChunkLine) {
    Fail(400, "chunk framing line too long");
    *used = n;
    return false;
  }
  line_.append(data, take);
  *used = take;
  if (!nl) return false;
  *out = std::string(Trim(std::string_view(line_).substr(0, line_.size() - 1)));
  line_.clear();
  return true;
}

size_t RequestParser::FeedChunked(const char* data, size_t n) {
  size_t used = 0;
  std::string line;
  switch (state_) {
    case State::kChunkSize: {
      if (!TakeLine(data, n, &used, &line)) return used;
      const std::string_view size = std::string_view(line).substr(0, line.find(';'));
      uint64_t v = 0;
      if (size.empty() || size.size() > 15) {
        Fail(400, "malformed chunk size");
        return used;
      }
      for (char c : Trim(size)) {
        const int h = HexValue(c);
        if (h < 0) {
          Fail(400, "malformed chunk size");
          return used;
        }
        v = v * 16 + static_cast<uint64_t>(h);
      }
      if (req_.body.size() + v > limits_.max_body_bytes) {
        Fail(413, absl::StrCat("the body exceeds ", limits_.max_body_bytes, " bytes"));
        return used;
      }
      chunk_left_ = v;
      state_ = v == 0 ? State::kTrailers : State::kChunkData;
      return used;
    }
    case State::kChunkData: {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(n, chunk_left_));
      req_.body.append(data, take);
      chunk_left_ -= take;
      if (chunk_left_ == 0) state_ = State::kChunkDataEnd;
      return take;
    }
    case State::kChunkDataEnd:
      if (!TakeLine(data, n, &used, &line)) return used;
      if (!line.empty()) Fail(400, "chunk data not followed by CRLF");
      else state_ = State::kChunkSize;
      return used;
    case State::kTrailers:
      if (!TakeLine(data, n, &used, &line)) return used;
      trailer_bytes_ += used;
      if (trailer_bytes_ > limits_.max_header_bytes) Fail(431, "trailers too large");
      else if (line.empty()) state_ = State::kDone;
      return used;
    default: return n;
  }
}

}  // namespace blockserve::server::http
