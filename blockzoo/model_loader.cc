#include "blockzoo/model_loader.h"

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "blockzoo/formats/llama2c.h"
#include "runtime/mapped_file.h"
#include "runtime/status_macros.h"
#include "runtime/tokenizer/byte_level_bpe.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"
#include "runtime/tokenizer/sentencepiece_model.h"

namespace blockserve::blockzoo {

std::string TokenizerFormatForPath(const std::string& path) {
  if (absl::EndsWith(path, ".json")) return "hf-json";
  if (absl::EndsWith(path, ".model")) return "sentencepiece";
  if (absl::EndsWith(path, ".gguf")) return "gguf";
  return "llama2c";
}

std::optional<std::string> FindTokenizerNextTo(const std::string& model_path, int vocab_size) {
  const auto dir = std::filesystem::path(model_path).parent_path();
  for (const std::string& name :
       {absl::StrCat("tok", vocab_size, ".bin"), std::string("tokenizer.bin")}) {
    const auto candidate = dir / name;
    if (std::filesystem::exists(candidate)) return candidate.string();
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> LoadTokenizerFile(const std::string& path,
                                                                      int vocab_size) {
  const std::string format = TokenizerFormatForPath(path);
  if (format == "hf-json") {
    ASSIGN_OR_RETURN(auto t, runtime::LoadTokenizerJson(path));
    return std::unique_ptr<runtime::Tokenizer>(std::move(t));
  }
  if (format == "sentencepiece") {
    ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(path));
    std::string error;
    auto t = runtime::ParseSentencePieceModel(file->data(), file->size(), &error);
    if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": ", error));
    return t;
  }
  if (format == "gguf") {
    ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(path));
    ASSIGN_OR_RETURN(GgufFile g, ParseGguf(file->data(), file->size(), path));
    return GgufTokenizer(g);
  }
  ASSIGN_OR_RETURN(auto t, runtime::LoadLlama2cTokenizer(path, vocab_size));
  return std::unique_ptr<runtime::Tokenizer>(std::move(t));
}

absl::StatusOr<LoadedModel> LoadModelFile(const std::string& path,
                                          const std::optional<std::string>& tokenizer_path) {
  ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(path));
  LoadedModel out;
  const bool is_gguf = file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0;
  if (is_gguf) {
    ASSIGN_OR_RETURN(GgufFile g, ParseGguf(file->data(), file->size(), path));
    ASSIGN_OR_RETURN(out.weights, GgufToWeights(g, file->data(), file));
    if (!tokenizer_path) {
      ASSIGN_OR_RETURN(out.tokenizer, GgufTokenizer(g));
    }
  } else {
    ASSIGN_OR_RETURN(out.weights, ParseLlama2c(file));
  }
  const int vocab = out.weights.config.vocab_size;
  if (tokenizer_path) {
    ASSIGN_OR_RETURN(out.tokenizer, LoadTokenizerFile(*tokenizer_path, vocab));
  } else if (!out.tokenizer) {
    if (auto found = FindTokenizerNextTo(path, vocab)) {
      ASSIGN_OR_RETURN(out.tokenizer, LoadTokenizerFile(*found, vocab));
    }
  }
  if (out.tokenizer && out.tokenizer->vocab_size() > vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tokenizer has ", out.tokenizer->vocab_size(), " tokens but the model only ", vocab));
  }
  return out;
}

}  // namespace blockserve::blockzoo
