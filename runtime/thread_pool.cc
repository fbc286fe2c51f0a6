#include "runtime/thread_pool.h"

#include <sched.h>

#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#define BS_PAUSE() _mm_pause()
#else
#define BS_PAUSE() ((void)0)
#endif

namespace blockserve::runtime {
namespace {
constexpr int kSpinIterations = 30000;  // ~0.5 ms of spinning before sleeping
}  // namespace

ThreadPool::ThreadPool(int num_threads)
    // Spinning only pays when every thread has a core; oversubscribed, it starves the others.
    : spin_iterations_(num_threads <= DefaultCpuCount() ? kSpinIterations : 64) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::DoTasks() {
  for (int i = next_.fetch_add(1, std::memory_order_relaxed); i < num_tasks_;
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    (*fn_)(i);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < spin_iterations_; ++spin) {
      BS_PAUSE();
      g = generation_.load(std::memory_order_acquire);
    }
    if (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = g;
    if (stop_.load(std::memory_order_acquire)) return;
    DoTasks();
    workers_done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Run(int n, absl::FunctionRef<void(int)> fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  fn_ = &fn;
  num_tasks_ = n;
  next_.store(0, std::memory_order_relaxed);
  workers_done_.store(0, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  DoTasks();
  // Every worker must leave DoTasks before the job's state can be reused.
  const int workers = static_cast<int>(workers_.size());
  for (int spin = 0; workers_done_.load(std::memory_order_acquire) < workers; ++spin) {
    if (spin < spin_iterations_) {
      BS_PAUSE();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t, int64_t)> fn,
                             int64_t min_per_part) {
  if (n <= 0) return;
  const int parts =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(size(), n / std::max<int64_t>(1, min_per_part))));
  if (parts == 1) return fn(0, n);  // not worth a fork-join
  Run(parts, [&](int i) {
    const int64_t begin = n * i / parts;
    const int64_t end = n * (i + 1) / parts;
    if (begin < end) fn(begin, end);
  });
}

int DefaultThreadCount() {
  if (const char* env = std::getenv("BLOCKSERVE_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return DefaultCpuCount();
}

int DefaultCpuCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

}  // namespace blockserve::runtime
