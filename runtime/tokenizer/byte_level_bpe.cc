#include "runtime/tokenizer/byte_level_bpe.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/unicode.h"

namespace blockserve::runtime {
namespace {

using unicode::Char;

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
void BuildByteMap(std::string (&to_unicode)[256],
                  absl::flat_hash_map<uint32_t, uint8_t>& to_byte) {
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp = printable ? b : 256 + next++;
    to_unicode[b].clear();
    unicode::AppendUtf8(cp, to_unicode[b]);
    to_byte[cp] = static_cast<uint8_t>(b);
  }
}

bool IsContraction(const std::vector<Char>& c, size_t i, std::string_view text, size_t* len) {
  if (c[i].cp != '\'' || i + 1 >= c.size()) return false;
  const uint32_t a = c[i + 1].cp;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') {
    *len = 2;
    return true;
  }
  if (i + 2 < c.size()) {
    const uint32_t b = c[i + 2].cp;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
      *len = 3;
      return true;
    }
  }
  return false;
}

enum class Cls { kLetter, kNumber, kSpace, kOther };
Cls Classify(uint32_t cp) {
  if (unicode::IsLetter(cp)) return Cls::kLetter;
  if (unicode::IsNumber(cp)) return Cls::kNumber;
  if (unicode::IsWhitespace(cp)) return Cls::kSpace;
  return Cls::kOther;
}

}  // namespace

std::vector<std::string_view> Gpt2PreTokenize(std::string_view text) {
  const std::vector<Char> c = unicode::DecodeUtf8(text);
  std::vector<std::string_view> out;
  const size_t n = c.size();
  auto emit = [&](size_t from, size_t to) {  // characters [from, to)
    const size_t begin = c[from].offset;
    const size_t end = to < n ? c[to].offset : text.size();
    out.push_back(text.substr(begin, end - begin));
  };
  size_t i = 0;
  while (i < n) {
    size_t len = 0;
    if (IsContraction(c, i, text, &len)) {
      emit(i, i + len);
      i += len;
      continue;
    }
    // ` ?X+` for X in {letters, numbers, other}: an optional leading space then a run.
    const size_t j = (c[i].cp == ' ' && i + 1 < n) ? i + 1 : i;
    const Cls cls = Classify(c[j].cp);
    if (cls != Cls::kSpace) {
      size_t e = j + 1;
      while (e < n && Classify(c[e].cp) == cls) ++e;
      emit(i, e);
      i = e;
      continue;
    }
    // Whitespace: `\s+(?!\S)` leaves the last space of a run to the following word.
    size_t e = i;
    while (e < n && Classify(c[e].cp) == Cls::kSpace) ++e;
    if (e < n && e - i > 1) --e;
    emit(i, e);
    i = e;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ByteLevelBpe::Create(
    std::vector<std::string> tokens, const std::vector<std::string>& merges, int32_t bos,
    int32_t eos, const std::string& source) {
  if (tokens.empty() || tokens.size() > (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": bad vocabulary size ", tokens.size()));
  }
  std::unique_ptr<ByteLevelBpe> t(new ByteLevelBpe());
  t->tokens_ = std::move(tokens);
  for (int32_t i = 0; i < static_cast<int32_t>(t->tokens_.size()); ++i) {
    t->vocab_.emplace(t->tokens_[i], i);
  }
  for (size_t r = 0; r < merges.size(); ++r) {
    const size_t sp = merges[r].find(' ', 1);
    if (sp == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": merge ", r, " is not two symbols: '", merges[r], "'"));
    }
    std::string key = merges[r];
    key[sp] = '\x01';
    t->merge_rank_.emplace(std::move(key), static_cast<int32_t>(r));
  }
  BuildByteMap(t->byte_to_unicode_, t->unicode_to_byte_);
  for (int32_t i = 0; i < static_cast<int32_t>(t->tokens_.size()); ++i) {
    t->max_token_bytes_ = std::max(t->max_token_bytes_, t->Decode(-1, i).size());
  }
  const int32_t n = static_cast<int32_t>(t->tokens_.size());
  t->bos_ = bos >= 0 && bos < n ? bos : -1;
  t->eos_ = eos >= 0 && eos < n ? eos : -1;
  return t;
}

namespace {

// An adjacent pair of symbols with a merge rank: the symbol starting at byte `left`, and the
// one after it, which started at `right` and ended at `end` (-1: the word's end) when pushed.
struct Pair {
  int32_t rank;
  int left, right, end;
};
// Lowest rank first; among equal ranks (the same pair) the leftmost.
struct Later {
  bool operator()(const Pair& x, const Pair& y) const {
    return x.rank > y.rank || (x.rank == y.rank && x.left > y.left);
  }
};

}  // namespace

// GPT-2 merges, repeatedly, every non-overlapping occurrence (left to right) of the adjacent
// pair with the lowest rank. Here the pairs wait in a heap over a linked list of symbols (each
// symbol named by the byte it starts at): the lowest-ranked pair that still holds is found,
// every still-holding pair of that rank is merged in order, then the pairs the merged symbols
// form with their neighbours are pushed. O(n log n) per word, where rescanning after every merge
// was O(n^2) (one long run of letters is one word).
void ByteLevelBpe::EncodeWord(std::string_view word, std::vector<int32_t>& out) const {
  const int n = static_cast<int>(word.size());
  std::vector<std::string> sym(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    sym[i] = byte_to_unicode_[static_cast<unsigned char>(word[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  std::priority_queue<Pair, std::vector<Pair>, Later> heap;
  std::string key;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const int right = next[left];
    key = sym[left];
    key += '\x01';
    key += sym[right];
    auto it = merge_rank_.find(key);
    if (it != merge_rank_.end()) heap.push({it->second, left, right, next[right]});
  };
  // Still two adjacent symbols spanning the same bytes as when pushed (removed symbols are
  // never a `left` again: their next is set to -2).
  auto holds = [&](const Pair& p) {
    return next[p.left] == p.right && next[p.right] == p.end;
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<int> merged;
  while (true) {
    while (!heap.empty() && !holds(heap.top())) heap.pop();
    if (heap.empty()) break;
    const int32_t rank = heap.top().rank;
    merged.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      const Pair p = heap.top();
      heap.pop();
      if (!holds(p)) continue;  // overlapped an occurrence merged just before
      sym[p.left] += sym[p.right];
      next[p.left] = p.end;
      if (p.end >= 0) prev[p.end] = p.left;
      next[p.right] = -2;
      merged.push_back(p.left);
    }
    for (int s : merged) {
      push(prev[s]);
      push(s);
    }
  }
  for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i]) {
    const std::string& s = sym[i];
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Not in the vocabulary (an incomplete merge table): fall back to single bytes.
    for (const Char& ch : unicode::DecodeUtf8(s)) {
      auto b = unicode_to_byte_.find(ch.cp);
      if (b == unicode_to_byte_.end()) continue;
      auto id = vocab_.find(byte_to_unicode_[b->second]);
      if (id != vocab_.end()) out.push_back(id->second);
    }
  }
}

std::vector<int32_t> ByteLevelBpe::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_ >= 0) ids.push_back(bos_);
  for (std::string_view word : Gpt2PreTokenize(text)) EncodeWord(word, ids);
  return ids;
}

std::string ByteLevelBpe::Decode(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size()) return "";
  std::string out;
  for (const Char& ch : unicode::DecodeUtf8(tokens_[token])) {
    auto b = unicode_to_byte_.find(ch.cp);
    if (b != unicode_to_byte_.end()) {
      out += static_cast<char>(b->second);
    } else {  // added/special tokens are stored as plain text
      out.append(tokens_[token], ch.offset, ch.len);
    }
  }
  return out;
}

}  // namespace blockserve::runtime
