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

namespace blockserve::blockzoo {

absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> LoadTokenizerFile(const std::string& path,
                                                                      int vocab_size) {
  if (absl::EndsWith(path, ".json")) {
    ASSIGN_OR_RETURN(auto t, runtime::LoadTokenizerJson(path));
    return std::unique_ptr<runtime::Tokenizer>(std::move(t));
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
    const auto dir = std::filesystem::path(path).parent_path();
    for (const std::string& name : {absl::StrCat("tok", vocab, ".bin"), std::string("tokenizer.bin")}) {
      const auto candidate = dir / name;
      if (std::filesystem::exists(candidate)) {
        ASSIGN_OR_RETURN(out.tokenizer, LoadTokenizerFile(candidate.string(), vocab));
        break;
      }
    }
  }
  if (out.tokenizer && out.tokenizer->vocab_size() > vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tokenizer has ", out.tokenizer->vocab_size(), " tokens but the model only ", vocab));
  }
  return out;
}

}  // namespace blockserve::blockzoo
