// Shared test helpers: Status matchers and where the real models live.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace blockserve::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << s.ToString();
  return s.ok();
}

MATCHER_P2(StatusIs, code, substr, "") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status: " << s.ToString();
  return s.code() == code && s.message().find(substr) != absl::string_view::npos;
}

// ../shared/models next to the source tree (or $BLOCKSERVE_MODELS_DIR); nullopt if absent.
inline std::optional<std::string> ModelsDir() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("BLOCKSERVE_MODELS_DIR")) candidates.push_back(env);
  candidates.push_back(std::string(BLOCKSERVE_SOURCE_DIR) + "/../shared/models");
  for (const auto& c : candidates) {
    if (std::filesystem::exists(c + "/stories260K/stories260K.bin") &&
        std::filesystem::exists(c + "/stories260K/reference.json")) {
      return c;
    }
  }
  return std::nullopt;
}

#define BS_REQUIRE_MODELS(dir_var)                                                   \
  const auto dir_var##_opt = ::blockserve::testing::ModelsDir();                     \
  if (!dir_var##_opt) GTEST_SKIP() << "real models not found (../shared/models or "  \
                                      "BLOCKSERVE_MODELS_DIR); scripts/fetch-models"; \
  const std::string dir_var = *dir_var##_opt

// A fresh temporary directory, removed at destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "blockserve-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace blockserve::testing
