#include "runtime/tokenizer/byte_level_bpe.h"

#include <limits>

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
  const int32_t n = static_cast<int32_t>(t->tokens_.size());
  t->bos_ = bos >= 0 && bos < n ? bos : -1;
  t->eos_ = eos >= 0 && eos < n ? eos : -1;
  return t;
}

void ByteLevelBpe::EncodeWord(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<std::string> sym;
  for (unsigned char b : word) sym.push_back(byte_to_unicode_[b]);
  std::string key;
  while (sym.size() > 1) {
    int32_t best = std::numeric_limits<int32_t>::max();
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      key = sym[i];
      key += '\x01';
      key += sym[i + 1];
      auto it = merge_rank_.find(key);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == std::numeric_limits<int32_t>::max()) break;
    // Merge every non-overlapping occurrence of the best pair, left to right.
    const std::string left = sym[best_i], right = sym[best_i + 1];
    std::vector<std::string> next;
    next.reserve(sym.size());
    for (size_t i = 0; i < sym.size(); ++i) {
      if (i + 1 < sym.size() && sym[i] == left && sym[i + 1] == right) {
        next.push_back(left + right);
        ++i;
      } else {
        next.push_back(std::move(sym[i]));
      }
    }
    sym = std::move(next);
  }
  for (const std::string& s : sym) {
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
