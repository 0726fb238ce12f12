// keywardend's metrics, rendered in the Prometheus text exposition format
// (version 0.0.4) by the metrics listener (service/server/http_endpoint.h).
// Counters and histograms are kept here, process-wide; values that are a
// state of the CA (valid KRAs, seconds until the exchange certificate and
// the CRL expire, readiness) are asked for at every scrape through a
// collector the daemon sets.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keywarden::service::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Adds `by` to a counter (created at 0 on first use).
void Add(std::string_view name, const Labels& labels = {}, double by = 1);
// One observation of a latency histogram (seconds).
void Observe(std::string_view name, const Labels& labels, double seconds);

// The counters the daemon keeps, and where each is counted.
inline constexpr char kRpcs[] = "keywarden_rpc_requests_total";          // method, code
inline constexpr char kRpcSeconds[] = "keywarden_rpc_duration_seconds";  // method, code
inline constexpr char kArchivals[] = "keywarden_archivals_total";        // source
inline constexpr char kRetrievals[] = "keywarden_key_retrievals_total";
inline constexpr char kSignatures[] = "keywarden_signatures_total";  // kind
inline constexpr char kAuditWriteFailures[] = "keywarden_audit_write_failures_total";

// A gauge's sample, from the collector.
struct Sample {
  std::string name;
  std::string help;
  Labels labels;
  double value = 0;
  bool counter = false;  // a total kept elsewhere (TYPE counter), else a gauge
  // A histogram's sample kept elsewhere: `name` is "<family>_bucket" (with
  // an "le" label), "<family>_sum" or "<family>_count"; the samples are
  // rendered together under "# TYPE <family> histogram".
  std::string histogram = {};
};
using Collector = std::function<std::vector<Sample>()>;
void SetCollector(Collector collector);  // replaces; null: none

// The whole exposition: every family with HELP and TYPE lines.
std::string Render();

// Prometheus label value escaping (\\, \", \n).
std::string EscapeLabel(std::string_view value);

}  // namespace keywarden::service::metrics
