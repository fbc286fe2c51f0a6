// Hugging Face tokenizer.json (byte-level BPE models only).
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "runtime/mapped_file.h"
#include "runtime/status_macros.h"
#include "runtime/tokenizer/byte_level_bpe.h"

namespace blockserve::runtime {
namespace {

using nlohmann::json;

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> FromJson(const json& root, const std::string& src) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": tokenizer.json: ", what));
  };
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return bad("missing object 'model'");
  }
  const json& model = root["model"];
  if (model.value("type", std::string("BPE")) != "BPE") return bad("model.type is not BPE");
  // Llama-style (SentencePiece BPE) tokenizer.json: spaces as U+2581 and byte fallback. Its
  // tokens are not byte-level, so reading it as GPT-2 BPE would give wrong ids.
  const bool metaspace =
      (root.contains("pre_tokenizer") && root["pre_tokenizer"].dump().find("Metaspace") != std::string::npos) ||
      (root.contains("decoder") && root["decoder"].dump().find("ByteFallback") != std::string::npos);
  if (model.value("byte_fallback", false) || metaspace) {
    return bad("a SentencePiece-style tokenizer (byte_fallback/Metaspace) is not supported as "
               "tokenizer.json; use the model's tokenizer.model");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) return bad("missing model.vocab");
  std::vector<std::string> tokens;
  auto put = [&](const std::string& text, int64_t id) -> absl::Status {
    if (id < 0 || id >= (1 << 24)) return bad(absl::StrCat("token id ", id, " out of range"));
    if (tokens.size() <= static_cast<size_t>(id)) tokens.resize(id + 1);
    tokens[id] = text;
    return absl::OkStatus();
  };
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) return bad(absl::StrCat("model.vocab['", text, "'] is not an integer"));
    RETURN_IF_ERROR(put(text, id.get<int64_t>()));
  }
  int32_t bos = -1, eos = -1;
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& t : root["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string()) {
        return bad("added_tokens entry without integer 'id' and string 'content'");
      }
      const std::string content = t["content"].get<std::string>();
      const int64_t id = t["id"].get<int64_t>();
      RETURN_IF_ERROR(put(content, id));
      if (content == "<s>" || content == "<|begin_of_text|>") bos = static_cast<int32_t>(id);
      if (content == "</s>" || content == "<|endoftext|>" || content == "<|end_of_text|>") {
        eos = static_cast<int32_t>(id);
      }
    }
  }
  std::vector<std::string> merges;
  if (model.contains("merges")) {
    if (!model["merges"].is_array()) return bad("model.merges is not an array");
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return bad("model.merges entry is neither \"a b\" nor [\"a\", \"b\"]");
      }
    }
  }
  return ByteLevelBpe::Create(std::move(tokens), merges, bos, eos, src);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ParseTokenizerJson(std::string_view text,
                                                                 const std::string& source) {
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tokenizer.json is not valid JSON"));
  }
  try {
    return FromJson(root, source);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<ByteLevelBpe>> LoadTokenizerJson(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  return ParseTokenizerJson(
      std::string_view(reinterpret_cast<const char*>(file->data()), file->size()), path);
}

}  // namespace blockserve::runtime
