// Readiness: whether this daemon can do its work now. Checked every
// `period` in the background (and so never by a probe's request itself):
//   token     - the CA token is up, this process is logged in to it, and
//               its objects can be listed (a token whose files were taken
//               away fails here even when no client calls);
//   database  - the CA database answers a read;
//   kras      - enough KRAs are usable for archival (only when a template
//               allows archival; otherwise not needed);
//   archival  - the CA token passed the archival self-test (the seed's
//               event 86 when not; only when a template allows archival).
// The result drives /readyz (service/server/http_endpoint.h) and the gRPC
// health service: "" (the whole server) and keywarden.v1.Enrollment are
// SERVING only when all four pass; the other keywarden services
// (Officer, Administration, Audit, Backup, Signing) need the token and the
// database. Changes are logged ("ready" / "not ready" with the failed checks).
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/health_check_service_interface.h>

#include "hsm/token.h"
#include "service/ca/authority.h"
#include "service/observe/metrics.h"
#include "service/storage/store.h"

namespace keywarden::service {

class Readiness {
 public:
  struct Check {
    std::string name;  // "token", "database", "kras", "archival"
    bool ok = false;
    std::string detail;  // why not (or "not needed")
  };
  struct State {
    bool ready = false;
    std::vector<Check> checks;
  };

  // Evaluates once before returning (so Current() is meaningful at once),
  // then every `period`. `health` may be null.
  Readiness(std::shared_ptr<hsm::Token> token, Store& store, CertificateAuthority& ca,
            grpc::HealthCheckServiceInterface* health,
            std::chrono::milliseconds period = std::chrono::milliseconds(500));
  ~Readiness();
  Readiness(const Readiness&) = delete;
  Readiness& operator=(const Readiness&) = delete;

  State Current() const;
  const std::shared_ptr<hsm::Token>& token() const { return token_; }

  // The gRPC service names whose health is set, with whether each needs
  // archival (KRAs and the archival self-test).
  static const std::vector<std::pair<std::string, bool>>& Services();

 private:
  State Evaluate();
  void Apply(const State& state);
  void Run();

  std::shared_ptr<hsm::Token> token_;
  Store& store_;
  CertificateAuthority& ca_;
  grpc::HealthCheckServiceInterface* health_;
  const std::chrono::milliseconds period_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_;
  bool applied_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

// The gauges asked for at every scrape: readiness and its checks, KRAs
// (valid, configured, needed per archival), seconds until the current
// exchange certificate and the CRL expire, the CA token's session pool and
// its module's PKCS#11 call counts.
metrics::Collector DaemonGauges(CertificateAuthority& ca, const Readiness& readiness);

}  // namespace keywarden::service
