#include "runtime/tokenizer/sentencepiece_bpe.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/mapped_file.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {

std::string Tokenizer::DecodeAll(const std::vector<int32_t>& ids, int32_t prev) const {
  std::string out;
  for (int32_t id : ids) {
    out += Decode(prev, id);
    prev = id;
  }
  return out;
}

std::string Tokenizer::DecodeText(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id != bos_id() && id != eos_id()) out += Decode(prev, id);
    prev = id;
  }
  return out;
}

SentencePieceBpe::SentencePieceBpe(std::vector<Piece> pieces, int32_t bos, int32_t eos)
    : pieces_(std::move(pieces)), bos_(bos), eos_(eos) {
  for (int32_t i = 0; i < static_cast<int32_t>(pieces_.size()); ++i) {
    index_.emplace(pieces_[i].text, i);  // first occurrence wins, as a sorted lookup would
  }
  for (int b = 0; b < 256; ++b) byte_ids_[b] = Lookup(absl::StrFormat("<0x%02X>", b));
  // A token covers at most its piece's bytes, or one byte (byte fallback, the dummy space).
  for (const Piece& p : pieces_) max_token_bytes_ = std::max(max_token_bytes_, p.text.size());
}

int32_t SentencePieceBpe::Lookup(std::string_view s) const {
  auto it = index_.find(absl::string_view(s.data(), s.size()));
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> SentencePieceBpe::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_ >= 0) ids.push_back(bos_);
  std::vector<int32_t> toks;
  if (!text.empty()) {
    const int32_t space = Lookup(" ");
    if (space >= 0) toks.push_back(space);
  }
  // One piece per UTF-8 character (at most 4 bytes), byte tokens when it is not in the vocab.
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 1;
    while (i + len < text.size() && len < 4 &&
           (static_cast<uint8_t>(text[i + len]) & 0xC0) == 0x80) {
      ++len;
    }
    const int32_t id = Lookup(text.substr(i, len));
    if (id >= 0) {
      toks.push_back(id);
    } else {
      for (size_t j = 0; j < len; ++j) {
        const int32_t b = byte_ids_[static_cast<uint8_t>(text[i + j])];
        toks.push_back(b >= 0 ? b : 0);  // 0 = <unk> by SentencePiece convention
      }
    }
    i += len;
  }
  Merge(toks);
  ids.insert(ids.end(), toks.begin(), toks.end());
  return ids;
}

namespace {

// An adjacent pair that would merge: the symbol at `left` (ids `a`, `b` when pushed) into `id`.
struct Candidate {
  float score;
  int left;
  int32_t a, b, id;
};
// Highest score first; among equal scores the leftmost, as llama2.c's scan picks.
struct After {
  bool operator()(const Candidate& x, const Candidate& y) const {
    return x.score < y.score || (x.score == y.score && x.left > y.left);
  }
};

}  // namespace

// llama2.c merges, repeatedly, the adjacent pair whose concatenation is the highest-scoring
// piece (the leftmost among equals; scores of -1e10 or less never merge). Here the pairs wait in
// a heap over a linked list of symbols: a popped pair is applied when both symbols still hold
// the ids it was made from (then it is the best current pair), else dropped. Each merge removes
// a symbol and pushes at most two pairs, so the whole is O(n log n), where rescanning after
// every merge was O(n^2) (a 16k-character prompt took 48 s).
void SentencePieceBpe::Merge(std::vector<int32_t>& toks) const {
  const int n = static_cast<int>(toks.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, After> heap;
  std::string merged;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const int32_t a = toks[left], b = toks[next[left]];
    merged = pieces_[a].text;
    merged += pieces_[b].text;
    const int32_t id = Lookup(merged);
    if (id >= 0 && pieces_[id].score > -1e10f) heap.push({pieces_[id].score, left, a, b, id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.left];
    if (toks[c.left] != c.a || right < 0 || toks[right] != c.b) continue;  // stale
    toks[c.left] = c.id;
    toks[right] = -1;  // removed
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::erase(toks, -1);
}

std::string SentencePieceBpe::Decode(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size()) return "";
  std::string_view piece = pieces_[token].text;
  if (prev == bos_ && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
  unsigned int byte = 0;
  if (piece.size() == 6 && std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1) {
    return std::string(1, static_cast<char>(byte));
  }
  return std::string(piece);
}

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> ParseLlama2cTokenizer(
    const uint8_t* data, size_t size, int vocab_size, const std::string& source) {
  auto fail = [&](size_t offset, absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": llama2.c tokenizer: ", what, " at byte ", offset));
  };
  if (vocab_size <= 0 || vocab_size > (1 << 24)) return fail(0, "bad vocab size");
  size_t off = 0;
  auto read = [&](void* dst, size_t n) {
    if (size - off < n) return false;
    std::memcpy(dst, data + off, n);
    off += n;
    return true;
  };
  int32_t max_len = 0;
  if (size < 4 || !read(&max_len, 4)) return fail(0, "file too short for the header");
  std::vector<SentencePieceBpe::Piece> pieces(vocab_size);
  for (int i = 0; i < vocab_size; ++i) {
    int32_t len = 0;
    if (!read(&pieces[i].score, 4) || !read(&len, 4)) {
      return fail(off, absl::StrCat("truncated entry ", i, " of ", vocab_size));
    }
    if (len < 0 || static_cast<size_t>(len) > size - off) {
      return fail(off, absl::StrCat("entry ", i, " has invalid length ", len));
    }
    pieces[i].text.assign(reinterpret_cast<const char*>(data + off), len);
    off += len;
  }
  // llama2.c convention: 0 <unk>, 1 BOS, 2 EOS.
  return std::make_unique<SentencePieceBpe>(std::move(pieces), vocab_size > 1 ? 1 : -1,
                                            vocab_size > 2 ? 2 : -1);
}

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> LoadLlama2cTokenizer(const std::string& path,
                                                                       int vocab_size) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  return ParseLlama2cTokenizer(file->data(), file->size(), vocab_size, path);
}

}  // namespace blockserve::runtime
