// libFuzzer: the HTTP/1.1 request parser (server/http_parser.h), fed the input whole and again
// in pieces cut where the input's first bytes say: both must agree, and a request must respect
// every limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "server/http_parser.h"

using blockserve::server::http::ParserLimits;
using blockserve::server::http::RequestParser;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ParserLimits limits;
  limits.max_header_bytes = 2048;
  limits.max_headers = 16;
  limits.max_body_bytes = 4096;
  const char* text = reinterpret_cast<const char*>(data);
  RequestParser whole(limits), pieces(limits);
  const size_t used = whole.Feed(text, size);
  size_t off = 0, step = size > 0 ? 1 + data[0] % 7 : 1;
  while (off < size && !pieces.complete() && !pieces.failed()) {
    const size_t n = std::min(step, size - off);
    const size_t u = pieces.Feed(text + off, n);
    off += u;
    if (u < n) break;  // complete or failed inside this piece
  }
  if (whole.complete() != pieces.complete() || whole.failed() != pieces.failed()) std::abort();
  if (whole.complete()) {
    if (off != used) std::abort();
    if (whole.request().body != pieces.request().body) std::abort();
    if (whole.request().body.size() > limits.max_body_bytes) std::abort();
    if (static_cast<int>(whole.request().headers.size()) > limits.max_headers) std::abort();
  }
  return 0;
}
