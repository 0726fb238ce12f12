#include "service/observe/metrics.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>

namespace keywarden::service::metrics {
namespace {

// Latency buckets (seconds): an RPC on a software token takes milliseconds;
// an RSA key generation or a slow HSM seconds.
constexpr std::array<double, 14> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,  0.5,    1,     2.5,  5,     10,   30};

struct Histogram {
  std::array<uint64_t, kBuckets.size()> buckets{};  // not cumulative
  uint64_t count = 0;
  double sum = 0;
};

struct Family {
  const char* help;
  bool histogram;
  std::map<std::string, double> counters;       // rendered labels -> value
  std::map<std::string, Histogram> histograms;  // rendered labels -> histogram
};

struct Known {
  const char* name;
  const char* help;
  bool histogram;
};
constexpr Known kKnown[] = {
    {kRpcs, "RPCs answered, by method and gRPC status code.", false},
    {kRpcSeconds, "RPC latency from arrival to status, by method and gRPC status code.", true},
    {kArchivals, "Private keys archived (source: enrollment or import).", false},
    {kRetrievals, "Archived keys released for recovery (GetRecoveryBlob).", false},
    {kSignatures, "Signatures made with CA-held keys (kind: certificate, crl or delegated).",
     false},
    {kAuditWriteFailures, "Audit records the CA could not write.", false},
};

struct Registry {
  std::mutex mu;
  std::map<std::string, Family> families;
  Collector collector;
  Registry() {
    for (const Known& k : kKnown) families.emplace(k.name, Family{k.help, k.histogram, {}, {}});
    // The unlabelled counters exist from the start (0), so a scrape shows them.
    families[kRetrievals].counters[""] = 0;
    families[kAuditWriteFailures].counters[""] = 0;
  }
};

Registry& Get() {
  static Registry* registry = new Registry();  // never destroyed: used until exit
  return *registry;
}

std::string RenderLabels(const Labels& labels) {
  std::string out;
  for (const auto& [k, v] : labels) {
    out += (out.empty() ? "" : ",") + k + "=\"" + EscapeLabel(v) + "\"";
  }
  return out;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<int64_t>(v));
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string Braced(const std::string& labels) {
  return labels.empty() ? "" : "{" + labels + "}";
}

Family& FamilyFor(Registry& r, std::string_view name, bool histogram) {
  auto it = r.families.find(std::string(name));
  if (it == r.families.end()) {
    it = r.families.emplace(std::string(name), Family{"", histogram, {}, {}}).first;
  }
  return it->second;
}

}  // namespace

std::string EscapeLabel(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Add(std::string_view name, const Labels& labels, double by) {
  Registry& r = Get();
  std::lock_guard<std::mutex> lock(r.mu);
  FamilyFor(r, name, false).counters[RenderLabels(labels)] += by;
}

void Observe(std::string_view name, const Labels& labels, double seconds) {
  Registry& r = Get();
  std::lock_guard<std::mutex> lock(r.mu);
  Histogram& h = FamilyFor(r, name, true).histograms[RenderLabels(labels)];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) {
      ++h.buckets[i];
      break;
    }
  }
  ++h.count;
  h.sum += seconds;
}

void SetCollector(Collector collector) {
  Registry& r = Get();
  std::lock_guard<std::mutex> lock(r.mu);
  r.collector = std::move(collector);
}

std::string Render() {
  Registry& r = Get();
  Collector collector;
  std::string out;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    collector = r.collector;
    for (const auto& [name, f] : r.families) {
      out += "# HELP " + name + " " + f.help + "\n";
      out += "# TYPE " + name + (f.histogram ? " histogram\n" : " counter\n");
      for (const auto& [labels, value] : f.counters) {
        out += name + Braced(labels) + " " + Number(value) + "\n";
      }
      for (const auto& [labels, h] : f.histograms) {
        const std::string sep = labels.empty() ? "" : labels + ",";
        uint64_t cumulative = 0;
        for (size_t i = 0; i < kBuckets.size(); ++i) {
          cumulative += h.buckets[i];
          out += name + "_bucket{" + sep + "le=\"" + Number(kBuckets[i]) + "\"} " +
                 std::to_string(cumulative) + "\n";
        }
        out += name + "_bucket{" + sep + "le=\"+Inf\"} " + std::to_string(h.count) + "\n";
        out += name + "_sum" + Braced(labels) + " " + Number(h.sum) + "\n";
        out += name + "_count" + Braced(labels) + " " + std::to_string(h.count) + "\n";
      }
    }
  }
  // Gauges, asked for now (outside the lock: the collector may take others).
  if (collector) {
    struct Collected {
      std::string help;
      bool counter = false;
      bool histogram = false;
      std::vector<std::string> lines;
    };
    std::map<std::string, Collected> gauges;
    for (const Sample& s : collector()) {
      auto& g = gauges[s.histogram.empty() ? s.name : s.histogram];
      if (g.help.empty()) g.help = s.help;
      g.counter = s.counter;
      g.histogram = !s.histogram.empty();
      g.lines.push_back(s.name + Braced(RenderLabels(s.labels)) + " " + Number(s.value));
    }
    for (const auto& [name, g] : gauges) {
      out += "# HELP " + name + " " + g.help + "\n# TYPE " + name +
             (g.histogram ? " histogram\n"
              : g.counter ? " counter\n"
                          : " gauge\n");
      for (const auto& line : g.lines) out += line + "\n";
    }
  }
  return out;
}

}  // namespace keywarden::service::metrics
