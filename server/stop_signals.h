// The long-running commands (serve, worker) take SIGTERM and SIGINT with sigwait on their main
// thread, so the signals are blocked before any thread starts (threads inherit the mask); a
// peer that closes its socket must not kill the process (SIGPIPE ignored).
#pragma once

#include <pthread.h>
#include <signal.h>

namespace blockserve::server {

// Blocks SIGTERM and SIGINT in this thread (call before starting threads), ignores SIGPIPE, and
// returns the set to sigwait on.
inline sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return set;
}

}  // namespace blockserve::server
