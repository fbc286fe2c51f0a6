// A soak of the real server: `blockserve serve` as its own process on a scratch zoo (the real
// stories260K, two partial fine-tunes and a LoRA model of it), three tenants, no KV budget
// configured (the default the quick start runs), and many streaming clients for a bounded time,
// each sending distinct prompts (every finished request leaves a cached prefix) to a random
// model as a random tenant, some of them hanging up mid-stream. Every second the server's RSS,
// open descriptors and held KV pages are sampled. It fails (exit 1) when, after the first
// third, RSS grows more than --rss_growth (default 10 %) or open descriptors more than 32, when
// the KV pages held exceed the budget, or when any request fails.
//   soak [--seconds 120] [--clients 32] [--max_running 32] [--models ../shared/models]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "nlohmann/json.hpp"
#include "tests/testing/http_client.h"

namespace blockserve::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr const char* kKeys[] = {"sk-soak-a-000000000", "sk-soak-b-000000000", "sk-soak-c-000000000"};
constexpr const char* kAdmin = "sk-soak-admin-00000";
const std::vector<std::string> kModels = {"stories260K", "ft1", "ft2", "lora"};

struct Sample {
  double t, rss_mib;
  int fds;
  long kv_used, kv_total;
};

int ProcFds(pid_t pid) {
  int n = 0;
  if (DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n - 2;
}

// Sum of a metric's samples in a Prometheus text page.
long MetricSum(const std::string& page, const std::string& name) {
  long sum = 0;
  size_t p = 0;
  while ((p = page.find("\n" + name, p)) != std::string::npos) {
    p += name.size() + 1;
    const size_t nl = page.find('\n', p);
    const size_t sp = page.rfind(' ', nl);  // the value ends the line (labels may hold spaces)
    if (sp != std::string::npos && sp > p) sum += std::lround(std::stod(page.substr(sp + 1, nl - sp - 1)));
  }
  return sum;
}

bool Run(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }

// The server process; its ports from the line it prints.
struct Server {
  pid_t pid = -1;
  int port = 0;
};

Server StartServer(const std::string& bin, const std::string& zoo, const std::string& config,
                   const std::string& log) {
  Server s;
  int out[2];
  if (pipe(out) != 0) return s;
  s.pid = fork();
  if (s.pid == 0) {
    dup2(out[1], 1);
    freopen(log.c_str(), "w", stderr);
    execl(bin.c_str(), bin.c_str(), "serve", "--zoo", zoo.c_str(), "--config", config.c_str(),
          "--http_port", "0", "--grpc_port", "0", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* f = fdopen(out[0], "r");
  char line[512];
  while (f && std::fgets(line, sizeof(line), f)) {
    if (const char* h = std::strstr(line, "http=")) {
      s.port = std::atoi(std::strchr(h, ':') + 1);
      break;
    }
  }
  return s;
}

struct Counts {
  std::atomic<uint64_t> requests{0}, errors{0}, hangups{0}, tokens{0};
};

// One client: streams requests back to back until `stop`.
void Client(int port, int id, const std::atomic<bool>& stop, Counts& c) {
  std::mt19937 rng(id);
  uint64_t n = 0;
  while (!stop) {
    const std::string model = kModels[rng() % kModels.size()];
    const char* key = kKeys[rng() % 3];
    const json body = {{"model", model},
                       {"prompt", absl::StrCat("Client ", id, " story ", n++, ": once upon a time")},
                       {"max_tokens", 16 + static_cast<int>(rng() % 48)},
                       {"stream", true}};
    const bool hang_up = rng() % 10 == 0;
    const int fd = testing::Connect(port);
    if (fd < 0) {
      ++c.errors;
      continue;
    }
    testing::SendAll(fd, testing::Request("POST", "/v1/completions", body.dump(), key));
    if (hang_up) {  // reads a little, then goes away mid-stream
      char buf[256];
      (void)!recv(fd, buf, sizeof(buf), 0);
      close(fd);
      ++c.hangups;
      continue;
    }
    const testing::HttpReply r = testing::ParseReply(testing::ReadAll(fd, 30000));
    close(fd);
    const auto events = testing::SseData(r.body);
    if (r.status != 200 || events.empty() || events.back() != "[DONE]") {
      ++c.errors;
    } else {
      ++c.requests;
      c.tokens += events.size() - 1;
    }
  }
}

int Main(int argc, char** argv) {
  double seconds = 120, growth = 0.10;
  int clients = 32, max_running = 32;
  std::string models = "../shared/models";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--seconds") seconds = std::stod(v);
    else if (a == "--clients") clients = std::stoi(v);
    else if (a == "--max_running") max_running = std::stoi(v);
    else if (a == "--models") models = v;
    else if (a == "--rss_growth") growth = std::stod(v);
  }
  const std::string bindir = std::string(argv[0]).substr(0, std::string(argv[0]).rfind('/'));
  ScratchDir dir;
  const std::string zoo = dir.path() + "/zoo", bz = bindir + "/blockzoo";
  std::fprintf(stderr, "soak: building the zoo...\n");
  if (!Run(absl::StrCat(bz, " import --zoo ", zoo, " ", models, "/stories260K/stories260K.bin > /dev/null")) ||
      !Run(absl::StrCat(bz, " derive --zoo ", zoo, " --from stories260K --name ft1 --layers 2 --seed 1 > /dev/null")) ||
      !Run(absl::StrCat(bz, " derive --zoo ", zoo, " --from stories260K --name ft2 --layers 1 --seed 2 > /dev/null")) ||
      !Run(absl::StrCat(bz, " derive --zoo ", zoo, " --from stories260K --name lora --recipe lora --lora_rank 4 --seed 3 > /dev/null"))) {
    std::fprintf(stderr, "soak: could not build the zoo (is %s/stories260K there?)\n", models.c_str());
    return 2;
  }
  const json config = {
      {"engine", {{"threads", 2}, {"max_running", max_running}}},  // no kv_budget_mib: the default
      {"gateway", {{"http_threads", std::max(64, 2 * clients)}}},
      {"admin_keys", {kAdmin}},
      {"tenants", {{{"name", "a"}, {"api_keys", {kKeys[0]}}},
                   {{"name", "b"}, {"api_keys", {kKeys[1]}}},
                   {{"name", "c"}, {"api_keys", {kKeys[2]}}, {"share_prefixes", true}}}}};
  std::ofstream(dir.path() + "/config.json") << config.dump();
  const Server s = StartServer(bindir + "/blockserve", zoo, dir.path() + "/config.json", dir.path() + "/serve.log");
  if (s.port <= 0) {
    std::fprintf(stderr, "soak: the server did not start\n");
    return 2;
  }
  std::printf("soak: %d streaming clients, %zu models, 3 tenants, %.0f s, server pid %d\n", clients,
              kModels.size(), seconds, s.pid);
  Counts counts;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) threads.emplace_back(Client, s.port, i, std::cref(stop), std::ref(counts));
  std::vector<Sample> samples;
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::string page = testing::Http(s.port, "GET", "/metrics", "", kAdmin).body;
    const long used = MetricSum(page, "blockserve_block_kv_pages_used");
    const long free = MetricSum(page, "blockserve_block_kv_pages_free");
    samples.push_back({std::chrono::duration<double>(Clock::now() - t0).count(), RssMiB(std::to_string(s.pid)),
                       ProcFds(s.pid), used, used + free});
    const Sample& x = samples.back();
    std::fprintf(stderr, "  t=%4.0f s  RSS %7.1f MiB  fds %5d  KV pages %6ld / %ld  requests %llu\n", x.t,
                 x.rss_mib, x.fds, x.kv_used, x.kv_total,
                 static_cast<unsigned long long>(counts.requests.load()));
  }
  stop = true;
  for (auto& t : threads) t.join();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // hung-up requests end, connections close
  const double idle_rss = RssMiB(std::to_string(s.pid));
  const int idle_fds = ProcFds(s.pid);
  kill(s.pid, SIGTERM);
  int status = 0;
  waitpid(s.pid, &status, 0);
  if (samples.size() < 3) return 2;
  const Sample& warm = samples[samples.size() / 3];
  double peak_rss = 0;
  long peak_kv = 0, kv_total = 0;
  int peak_fds = 0;
  for (size_t i = samples.size() / 3; i < samples.size(); ++i) {
    peak_rss = std::max(peak_rss, samples[i].rss_mib);
    peak_fds = std::max(peak_fds, samples[i].fds);
    peak_kv = std::max(peak_kv, samples[i].kv_used);
    kv_total = std::max(kv_total, samples[i].kv_total);
  }
  const double rss_growth = (peak_rss - warm.rss_mib) / warm.rss_mib;
  const bool rss_ok = rss_growth <= growth;
  const bool fds_ok = peak_fds <= warm.fds + clients + 32 && idle_fds <= samples.front().fds + 32;
  const bool kv_ok = peak_kv <= kv_total && kv_total > 0;
  const bool req_ok = counts.errors == 0 && counts.requests > 0;
  std::printf("  %llu requests (%llu tokens), %llu hung up mid-stream, %llu errors\n",
              static_cast<unsigned long long>(counts.requests.load()),
              static_cast<unsigned long long>(counts.tokens.load()),
              static_cast<unsigned long long>(counts.hangups.load()),
              static_cast<unsigned long long>(counts.errors.load()));
  std::printf("  RSS %.1f MiB at t=%.0f s (a third in), peak after %.1f MiB (%+.1f%%, bound %+.0f%%), "
              "idle at the end %.1f MiB  %s\n",
              warm.rss_mib, warm.t, peak_rss, 100 * rss_growth, 100 * growth, idle_rss, rss_ok ? "ok" : "FAIL");
  std::printf("  open fds %d a third in, peak %d, idle at the end %d  %s\n", warm.fds, peak_fds, idle_fds,
              fds_ok ? "ok" : "FAIL");
  std::printf("  KV pages held: peak %ld of a %ld-page budget  %s\n", peak_kv, kv_total, kv_ok ? "ok" : "FAIL");
  std::printf("{\"seconds\": %.0f, \"clients\": %d, \"requests\": %llu, \"errors\": %llu, "
              "\"rss_third_mib\": %.1f, \"rss_peak_mib\": %.1f, \"rss_idle_mib\": %.1f, "
              "\"fds_peak\": %d, \"kv_pages_peak\": %ld, \"kv_pages_budget\": %ld}\n",
              seconds, clients, static_cast<unsigned long long>(counts.requests.load()),
              static_cast<unsigned long long>(counts.errors.load()), warm.rss_mib, peak_rss, idle_rss,
              peak_fds, peak_kv, kv_total);
  return rss_ok && fds_ok && kv_ok && req_ok ? 0 : 1;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
