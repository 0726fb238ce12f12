// Small helpers the benchmarks share: CPU seconds of this process and of a
// child (the daemon), percentiles of latency samples, argument parsing, and
// an mTLS connection of its own to a DaemonHarness daemon.
#pragma once

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <openssl/x509.h>

#include "hsm/ossl.h"

#include "tests/service/daemon_harness.h"

namespace keywarden::bench {

// The CPUs this thread may run on, in order.
inline std::vector<int> AffinityCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// Moves every thread of this process (and the threads they start later) to
// `cpus`. False if a thread could not be moved.
inline bool PinProcess(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return false;
  bool ok = true;
  while (const dirent* e = readdir(tasks)) {
    if (e->d_name[0] == '.') continue;
    const pid_t tid = static_cast<pid_t>(std::atoi(e->d_name));
    // A thread that ended since the listing is not an error.
    if (sched_setaffinity(tid, sizeof set, &set) != 0 && errno != ESRCH) ok = false;
  }
  closedir(tasks);
  return ok;
}

// "0-1" or "0,2,4" for a header line.
inline std::string CpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(cpus[i]);
    if (j > i) out += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

// User + system CPU seconds of this process.
inline double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// utime + stime of `pid` from /proc (the daemon is a child still running);
// 0 if it cannot be read.
inline double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), {});
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<std::string> fields;
  for (size_t at = paren + 2; at < stat.size();) {
    const size_t space = stat.find(' ', at);
    fields.push_back(stat.substr(at, space == std::string::npos ? std::string::npos : space - at));
    if (space == std::string::npos) break;
    at = space + 1;
  }
  if (fields.size() < 13) return 0;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (std::atof(fields[11].c_str()) + std::atof(fields[12].c_str())) / ticks;
}

// The p-quantile (0..1) of `v`, nearest rank; 0 for no samples.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// What a cell's figures are made from, so that rounds of the same cell add
// up: the measured latencies, the measured time, the operations the CPU
// times cover (warm-up included), and the server's and the client's CPU
// seconds.
struct Tally {
  std::vector<double> samples_ms;
  double seconds = 0;
  double counted = 0;
  double server_cpu_s = 0, client_cpu_s = 0;

  // A cell's latencies, one list per thread, measured over `measured_s`.
  void Record(const std::vector<std::vector<double>>& per_thread, double measured_s) {
    for (const auto& l : per_thread) samples_ms.insert(samples_ms.end(), l.begin(), l.end());
    seconds = measured_s;
  }
  void Add(const Tally& other) {
    samples_ms.insert(samples_ms.end(), other.samples_ms.begin(), other.samples_ms.end());
    seconds += other.seconds;
    counted += other.counted;
    server_cpu_s += other.server_cpu_s;
    client_cpu_s += other.client_cpu_s;
  }
  // Operations per second, `per_sample` operations per measured sample.
  double Rate(int per_sample = 1) const {
    return seconds > 0 ? static_cast<double>(samples_ms.size()) * per_sample / seconds : 0;
  }
  double ServerCpuUs() const { return counted > 0 ? server_cpu_s * 1e6 / counted : 0; }
  double ClientCpuUs() const { return counted > 0 ? client_cpu_s * 1e6 / counted : 0; }
};

// Adds one round of a cell (a struct with `tally` and `ok`) to its total,
// taking the first round whole, and lets `finalize` compute the total's
// figures again from its tally.
template <typename Cell, typename Finalize>
void AddRound(Cell& total, Cell round, bool first, Finalize finalize) {
  if (first) {
    total = std::move(round);
    return;
  }
  total.tally.Add(round.tally);
  total.ok = total.ok && round.ok;
  finalize(total);
}

// The value of option `name` at argv[i], given as "NAME VALUE" (i advances)
// or "NAME=VALUE"; null if argv[i] is another option.
inline const char* FlagValue(int argc, char** argv, int& i, const char* name) {
  const std::string a = argv[i];
  if (a == name && i + 1 < argc) return argv[++i];
  const std::string prefix = std::string(name) + "=";
  if (a.rfind(prefix, 0) == 0) return argv[i] + prefix.size();
  return nullptr;
}

// "1,4,16" -> {1, 4, 16}.
inline std::vector<int> IntList(const std::string& list) {
  std::vector<int> out;
  for (std::string rest = list; !rest.empty();) {
    const size_t comma = rest.find(',');
    out.push_back(std::atoi(rest.substr(0, comma).c_str()));
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return out;
}

// `v` with `decimals` digits after the point, for the tables.
inline std::string Fixed(double v, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// A certificate from DER as an RPC carries it; null if it does not parse.
inline ossl::UniquePtr<X509> X509FromDer(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  return ossl::UniquePtr<X509>(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

inline std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A channel with a TLS connection of its own (distinct channel arguments
// keep gRPC from sharing one), as client `who` of the harness, connected.
// `target` (host:port) defaults to the first keywardend; a replica's
// (DaemonHarness::replica_target) reaches that one instead.
inline std::shared_ptr<grpc::Channel> OwnConnection(testing::DaemonHarness& daemon,
                                                    const std::string& who, int n,
                                                    const std::string& target = "") {
  const auto& id = daemon.client(who);
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = Slurp(daemon.tls_ca_path());
  tls.pem_cert_chain = Slurp(id.cert_path);
  tls.pem_private_key = Slurp(id.key_path);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt("keywarden.bench.connection", n);
  auto channel = grpc::CreateCustomChannel(target.empty() ? daemon.target() : target,
                                           grpc::SslCredentials(tls), args);
  channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return channel;
}

}  // namespace keywarden::bench
