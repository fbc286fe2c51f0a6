// A fork-join pool for compute kernels. Workers spin briefly before sleeping, so the many small
// parallel sections of a decode step (one per weight matrix) cost microseconds, not a futex
// round trip each.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace blockserve::runtime {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread: 1 means everything runs on the caller.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) once for every i in [0, n), spread over the pool (the caller takes part), and
  // returns when all calls are done. Not reentrant: one caller at a time.
  void Run(int n, absl::FunctionRef<void(int)> fn);

  // Splits [0, n) into up to size() contiguous ranges of at least `min_per_part` items (one range,
  // run on the caller, when n is smaller) and calls fn(begin, end) for each non-empty one.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t, int64_t)> fn,
                   int64_t min_per_part = 1);

 private:
  void WorkerLoop();
  void DoTasks();

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_{0};
  std::atomic<int> workers_done_{0};
  std::atomic<bool> stop_{false};
  const int spin_iterations_;
  int num_tasks_ = 0;
  const absl::FunctionRef<void(int)>* fn_ = nullptr;
};

// Threads to use by default: the BLOCKSERVE_THREADS environment variable, else the number of
// CPUs this process may run on.
int DefaultThreadCount();
// CPUs this process may run on.
int DefaultCpuCount();

}  // namespace blockserve::runtime
