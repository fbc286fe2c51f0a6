// Crash-safe file writes and the zoo's lock.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace blockserve::blockzoo {

// Temporary files are named `.tmp-<pid>-<n>-<final name>` in the destination directory, so a
// crashed writer leaves only names that `gc` recognises and removes.
constexpr absl::string_view kTempPrefix = ".tmp-";

// Writes a file so that readers see either nothing or the whole file: data goes to a temporary
// file in the same directory, is fsync'ed, renamed over `path`, and the directory is fsync'ed.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);
  AtomicFileWriter(AtomicFileWriter&& o) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  ~AtomicFileWriter();  // removes the temporary file unless committed

  absl::Status Write(const void* data, size_t n);
  absl::Status Write(absl::string_view s) { return Write(s.data(), s.size()); }
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp, int fd)
      : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  std::string path_, tmp_;
  int fd_ = -1;
};

absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents);
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, size_t max_bytes);
absl::Status FsyncDir(const std::string& dir);

// An advisory lock (flock) on a file: exclusive for writers, shared for readers. Released when
// destroyed or when the process dies, so a killed writer never wedges the zoo.
class FileLock {
 public:
  enum class Mode { kShared, kExclusive };
  // Blocks until the lock is granted.
  static absl::StatusOr<FileLock> Acquire(const std::string& path, Mode mode);
  FileLock(FileLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace blockserve::blockzoo
