// `blockserve <command> ARGS` as a child process of a test: stdout read line by line (the
// commands print the port they listen on), stderr kept in a log file, killed when the test ends.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <string>
#include <vector>

namespace blockserve::testing {

class ChildProcess {
 public:
  ChildProcess(const std::string& command, const std::vector<std::string>& args,
               const std::string& log) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      FILE* err = std::fopen(log.c_str(), "w");
      if (err) dup2(fileno(err), 2);
      close(out[0]);
      std::vector<std::string> all = {std::string(BLOCKSERVE_BINARY_DIR) + "/bin/blockserve",
                                      command};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    out_ = fdopen(out[0], "r");
  }
  ~ChildProcess() {
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_) std::fclose(out_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // The number in the first stdout line matching `pattern` (its first group); 0 when the
  // process ended first.
  int ReadPort(const std::string& pattern) {
    char line[512];
    const std::regex re(pattern);
    while (out_ && std::fgets(line, sizeof(line), out_)) {
      std::cmatch m;
      if (std::regex_search(line, m, re)) return std::stoi(m[1]);
    }
    return 0;
  }
  void Signal(int sig) { kill(pid_, sig); }
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  bool waited_ = false;
};

}  // namespace blockserve::testing
