// keywardend: the keywarden CA daemon.
//   keywardend --config /etc/keywarden/keywarden.toml [--port-file FILE]
//              [--accept-broken-audit]
//   keywardend --config FILE --check-config
//   keywardend --version
// Prints "keywardend: listening on HOST:PORT" once it serves; stops cleanly
// on SIGTERM or SIGINT; SIGHUP reloads the files that may change at run time
// (KRA certificates and CRLs, the TLS server certificate, key and client CAs).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/synchronization/mutex.h"
#include "hsm/log_sink.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "pki/cores.h"
#include "pki/files.h"
#include "service/ca/authority.h"
#include "service/config.h"
#include "service/daemon/check_config.h"
#include "service/daemon/state_dir.h"
#include "service/daemon/systemd_notify.h"
#include "service/observe/log.h"
#include "service/observe/metrics.h"
#include "service/server/http_endpoint.h"
#include "service/server/publication_endpoint.h"
#include "service/server/readiness.h"
#include "service/server/server.h"
#include "service/server/signing_service.h"
#include "service/server/token_watch.h"
#include "service/server/workers.h"
#include "service/signing/delegated_signer.h"
#include "service/storage/db_lock.h"
#include "service/storage/postgres_database.h"
#include "service/storage/store.h"

namespace {

using namespace keywarden;

int Fail(const absl::Status& status) {
  service::log::Error(std::string(status.message()));
  return 1;
}

std::string SignalName(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "signal " + std::to_string(sig);
  }
}

// Everything SIGHUP reloads goes through here: the CA's own files (KRAs and
// their CRLs) and the listening port's TLS material. What was reloaded and
// what failed (the previous material stays in use) is said in one audit
// record, service.reloaded, and one line on stderr.
void ReloadOnSighup(service::CertificateAuthority& ca, service::ServerTls& tls) {
  const std::string who = "system (SIGHUP)";
  service::CertificateAuthority::RuntimeReload report = ca.ReloadRuntime(who);
  auto served = tls.Reload();
  if (served.ok()) {
    for (auto& line : *served) report.reloaded.push_back(std::move(line));
  } else {
    std::string still;
    for (const auto& line : tls.Describe()) still += (still.empty() ? "" : ", ") + line;
    report.failed.push_back(StrCat("TLS server certificate and client CAs not reloaded: ",
                                   served.status().message(), "; still serving ", still));
  }
  ca.Audit(
      who, "service.reloaded",
      nlohmann::json{{"signal", "SIGHUP"}, {"reloaded", report.reloaded}, {"failed", report.failed}}
          .dump());
  std::string line = "SIGHUP: reloaded ";
  for (size_t i = 0; i < report.reloaded.size(); ++i) {
    line += (i == 0 ? "" : "; ") + report.reloaded[i];
  }
  if (report.reloaded.empty()) line += "nothing";
  for (const auto& f : report.failed) line += " -- FAILED: " + f;
  if (report.failed.empty()) {
    service::log::Info(line);
  } else {
    service::log::Warn(line);
  }
}

// Signs the head of the audit chain (when it moved); a failure is said
// loudly and does not stop the daemon (the records stay chained; the next
// checkpoint covers them).
void Checkpoint(service::CertificateAuthority& ca, const char* when) {
  auto checkpoint = ca.CheckpointAudit();
  if (!checkpoint.ok() && !absl::IsNotFound(checkpoint.status())) {
    service::log::Error(
        "AUDIT CHECKPOINT FAILURE",
        nlohmann::json{{"when", when}, {"error", std::string(checkpoint.status().message())}});
  }
}

int Run(const std::string& config_path, const std::string& port_file, bool accept_broken_audit) {
  auto config = service::LoadConfig(config_path);
  if (!config.ok()) return Fail(config.status());
  service::log::Init(config->log.format == "json"      ? service::log::Format::kJson
                     : config->log.format == "journal" ? service::log::Format::kJournal
                                                       : service::log::Format::kText);
  // The hsm layer's own lines (a token down or back) through the same log.
  hsm::SetLogSink([](hsm::LogLevel level, std::string_view message, const hsm::LogFields& fields) {
    nlohmann::json f = nlohmann::json::object();
    for (const auto& [key, value] : fields) f[key] = value;
    service::log::Write(level == hsm::LogLevel::kError     ? service::log::Level::kError
                        : level == hsm::LogLevel::kWarning ? service::log::Level::kWarning
                                                           : service::log::Level::kInfo,
                        message, f);
  });
  config->audit.accept_broken = accept_broken_audit;
  if (config->database.backend == "sqlite") {
    if (auto st = service::EnsureStateDirectory(config->database.path); !st.ok()) return Fail(st);
  }
  // SQLite: one writer, held until the process ends, so `keywarden
  // restore` (and a second keywardend on the same file) refuse while this
  // one runs. PostgreSQL: any number of replicas share the database, each
  // holding the daemon lock shared on a connection of its own, so `keywarden
  // restore` (which takes it exclusively) refuses while any runs.
  std::unique_ptr<service::DatabaseLock> db_lock;
  if (config->database.backend == "sqlite") {
    auto locked = service::LockDatabase(config->database.path, "keywardend");
    if (!locked.ok()) return Fail(locked.status());
    db_lock = std::move(*locked);
  } else if (config->database.backend == "postgresql") {
    auto password = service::ReadDatabasePassword(config->database);
    if (!password.ok()) return Fail(password.status());
    service::PostgresOptions pg;
    pg.connection = config->database.connection;
    pg.password.assign(password->view());
    auto locked =
        service::LockPostgresDatabase(pg, service::PostgresLockMode::kShared, "keywardend");
    if (!locked.ok()) return Fail(locked.status());
    db_lock = std::move(*locked);
  }
  auto store = service::OpenConfiguredStore(config->database);
  if (!store.ok()) return Fail(store.status());

  auto uri = hsm::Pkcs11Uri::Parse(config->hsm.token);
  if (!uri.ok()) return Fail(uri.status());
  auto pin = hsm::PinSource::Parse(config->hsm.pin_source);
  if (!pin.ok()) return Fail(pin.status());
  hsm::OpenOptions open;
  open.default_module = config->hsm.module;
  open.pin = *pin;
  open.token.max_sessions = static_cast<size_t>(config->hsm.max_sessions);
  auto token = hsm::OpenToken(*uri, open);
  if (!token.ok()) {
    // Missing or damaged (e.g. a SoftHSM2 token file emptied by a kill
    // while C_Login rewrote it): say what to restore, never make a new one.
    return Fail(absl::Status(
        token.status().code(),
        StrCat("the CA token cannot be opened: ", token.status().message(),
               ". If its files are missing or damaged, stop and restore the newest copy of the "
               "token directory made by `keywarden token backup` (for SoftHSM2, into the "
               "directories.tokendir of SOFTHSM2_CONF); do not initialise a new token: the CA "
               "keys are only on it")));
  }
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return Fail(crypto.status());

  auto ca = service::CertificateAuthority::Open(
      *config, **store, *crypto, *token, [] { return static_cast<int64_t>(std::time(nullptr)); });
  if (!ca.ok()) return Fail(ca.status());
  // Requests a crash left in process are failed "interrupted" (audited).
  // SQLite: this process holds the database alone, so every one is. On
  // PostgreSQL another replica may be processing a request right now: only
  // those in process for longer than any request takes, and the
  // maintenance loop sweeps again later (a replica killed and never
  // restarted leaves its requests to the others).
  const bool shared_database = config->database.backend == "postgresql";
  const int64_t interrupted_after = config->database.in_process_timeout.count();
  auto interrupted_before = [shared_database, interrupted_after] {
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    return shared_database ? now - interrupted_after : now + 1;
  };
  const auto sweep_period = std::min<std::chrono::seconds>(
      std::chrono::seconds(std::max<int64_t>(interrupted_after / 2, 1)), std::chrono::minutes(1));
  auto interrupted = (*ca)->ResolveInterrupted(interrupted_before());
  if (!interrupted.ok()) return Fail(interrupted.status());
  if (*interrupted > 0) {
    service::log::Warn("requests interrupted by a previous stop failed",
                       nlohmann::json{{"count", *interrupted}});
  }
  // Delegated signing ([[signing.keys]]): keys on the CA token or others.
  service::CertificateAuthority* ca_ptr = ca->get();
  auto signer = service::signing::DelegatedSigner::Open(
      *config, *crypto, {*token},
      [ca_ptr](const std::string& principal, const std::string& event, const std::string& details) {
        ca_ptr->Audit(principal, event, details);
      },
      [] { return static_cast<int64_t>(std::time(nullptr)); });
  if (!signer.ok()) return Fail(signer.status());
  // One key, one owner across both ways of issuing: a key this CA certified
  // (or holds archived) for someone is not certified for anyone else.
  (*signer)->SetKeyOwnerCheck(
      [ca_ptr](const std::string& spki, const std::string& subject, const std::string& principal) {
        return ca_ptr->CheckKeyOwner(spki, subject, principal, /*archiving=*/false);
      });
  // What an alias issues under this CA's own certificate is this CA's
  // certificate: recorded in its database (revocable, on its CRL).
  (*signer)->SetIssuanceRecorder([ca_ptr](const service::signing::DelegatedSigner::Issuance& i) {
    return ca_ptr->RecordDelegatedIssuance(i.principal, i.alias, i.template_name, i.request,
                                           i.certificate, i.audit_details);
  });
  // The archival self-test (seed: event 86) before any request is served;
  // a failure refuses archival only (0x80090019), everything else serves.
  (*ca)->RunArchivalSelfTest("start");
  std::vector<std::unique_ptr<grpc::Service>> extra;
  extra.push_back(service::MakeSigningService(**ca, **signer));
  (*signer)->StartPeriodicFlush(config->signing.audit_interval);

  auto server = service::StartServer(*config, **ca, std::move(extra));
  if (!server.ok()) return Fail(server.status());

  // Token faults: recovery in the background, hsm.unavailable /
  // hsm.recovered audited and logged. Health is Readiness's (below).
  auto token_watch = std::make_unique<service::TokenWatch>(
      *token, nullptr,
      [ca_ptr](const std::string& event, const std::string& details) {
        ca_ptr->Audit("system", event, details);
      },
      [ca_ptr] { ca_ptr->RunArchivalSelfTest("token recovered"); });

  // Readiness (token, database, KRAs) drives gRPC health and /readyz.
  auto readiness = std::make_unique<service::Readiness>(*token, **store, **ca,
                                                        server->server->GetHealthCheckService());
  std::unique_ptr<service::HttpEndpoint> http;
  if (!config->metrics.listen.empty()) {
    service::Readiness* r = readiness.get();
    auto started =
        service::HttpEndpoint::Start(config->metrics.listen, [r] { return r->Current(); });
    if (!started.ok()) return Fail(started.status());
    http = std::move(*started);
    service::metrics::SetCollector(service::DaemonGauges(**ca, *readiness));
  }

  // [publication] listen: the CRL and the CA certificate for relying parties.
  std::unique_ptr<service::PublicationEndpoint> publication;
  if (!config->publication.listen.empty()) {
    auto content = service::PublicationEndpoint::ContentOf(*config, **ca);
    if (!content.ok()) return Fail(content.status());
    auto started =
        service::PublicationEndpoint::Start(config->publication.listen, std::move(*content));
    if (!started.ok()) return Fail(started.status());
    publication = std::move(*started);
  }

  const std::string host = config->server.listen.substr(0, config->server.listen.rfind(':'));
  {
    size_t valid = 0;
    for (const auto& k : (*ca)->KraStatuses()) valid += k.state == service::KraState::kValid;
    nlohmann::json fields = {{"listen", host + ":" + std::to_string(server->port)},
                             {"config", config_path},
                             {"kras_valid", valid},
                             {"kras_configured", (*ca)->KraStatuses().size()},
                             {"cores", pki::UsableCores()},
                             {"workers", service::ServiceWorkerCount(*config)}};
    if (http) {
      fields["metrics"] = "http://" + http->host() + ":" + std::to_string(http->port());
    }
    if (publication) {
      fields["publication"] =
          "http://" + publication->host() + ":" + std::to_string(publication->port());
    }
    service::log::Info("started", fields);
  }
  std::printf("keywardend: listening on %s:%d\n", host.c_str(), server->port);
  std::fflush(stdout);
  if (!port_file.empty()) {
    auto st = pki::WriteFileAtomically(port_file, std::to_string(server->port) + "\n",
                                       pki::Overwrite::kReplace);
    if (!st.ok()) return Fail(st);
  }
  // Type=notify: systemd counts the service started from here on.
  service::SystemdNotifier systemd;
  systemd.Ready(StrCat("serving on ", host, ":", server->port));

  // Keep the exchange certificate and the CRL current even when no client
  // asks: renewal happens inside the overlap, republication at half-life.
  std::mutex maintenance_mu;
  std::condition_variable maintenance_cv;
  bool stopping = false;
  const auto period = std::chrono::seconds(std::clamp<int64_t>(
      std::min(config->exchange.overlap.count(), config->crl.validity.count()) / 4, 1, 60));
  // Signed audit checkpoints every [audit] checkpoint_interval.
  const auto checkpoint_period = config->audit.checkpoint_interval;
  // At least every 5 s: with several replicas, a CRL (and the revocations
  // behind it) or an exchange certificate another one published is taken
  // over within a tick even when no client asks here (one settings read).
  const auto tick =
      std::min<std::chrono::seconds>({period, checkpoint_period, std::chrono::seconds(5)});
  auto next_checkpoint = std::chrono::steady_clock::now() + checkpoint_period;
  auto next_interrupted_sweep = std::chrono::steady_clock::now() + sweep_period;
  std::thread maintenance([&] {
    std::unique_lock<std::mutex> lock(maintenance_mu);
    while (!maintenance_cv.wait_for(lock, tick, [&] { return stopping; })) {
      lock.unlock();
      if (std::chrono::steady_clock::now() >= next_checkpoint) {
        Checkpoint(**ca, "periodic");
        next_checkpoint = std::chrono::steady_clock::now() + checkpoint_period;
      }
      if (auto x = (*ca)->CurrentExchange(); !x.ok()) {
        service::log::Error("exchange certificate renewal failed",
                            nlohmann::json{{"error", std::string(x.status().message())}});
      }
      if (auto crl = (*ca)->CurrentCrl(); !crl.ok()) {
        service::log::Error("CRL publication failed",
                            nlohmann::json{{"error", std::string(crl.status().message())}});
      }
      // PostgreSQL: the daemon lock goes with its connection; a server
      // restart drops it, so it is taken again here. If a keywarden restore
      // took it meanwhile, this replica must not write any more: it stops.
      if (db_lock != nullptr) {
        absl::Status held = db_lock->Refresh();
        if (absl::IsFailedPrecondition(held)) {
          service::log::Error("database lock lost, stopping",
                              nlohmann::json{{"error", std::string(held.message())}});
          kill(getpid(), SIGTERM);
        } else if (!held.ok()) {
          service::log::Warn("database lock cannot be checked",
                             nlohmann::json{{"error", std::string(held.message())}});
        }
      }
      if (shared_database && std::chrono::steady_clock::now() >= next_interrupted_sweep) {
        next_interrupted_sweep = std::chrono::steady_clock::now() + sweep_period;
        auto swept = (*ca)->ResolveInterrupted(interrupted_before());
        if (!swept.ok()) {
          service::log::Error("resolving interrupted requests failed",
                              nlohmann::json{{"error", std::string(swept.status().message())}});
        } else if (*swept > 0) {
          service::log::Warn("requests interrupted on a replica failed",
                             nlohmann::json{{"count", *swept}});
        }
      }
      lock.lock();
    }
  });

  // The signals were blocked in main before any thread started (one that
  // arrived during start-up is pending and handled here); this thread waits
  // for them. SIGHUP reloads and keeps serving; SIGTERM and SIGINT stop.
  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGHUP);
  int sig = 0;
  for (;;) {
    if (sigwait(&handled, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    ReloadOnSighup(**ca, *server->tls);
  }
  service::log::Info(SignalName(sig) + " received, stopping");
  systemd.Stopping(SignalName(sig) + " received, stopping");
  {
    std::lock_guard<std::mutex> lock(maintenance_mu);
    stopping = true;
  }
  maintenance_cv.notify_all();
  maintenance.join();
  const auto stop_started = std::chrono::steady_clock::now();
  service::metrics::SetCollector(nullptr);
  http.reset();
  readiness.reset();
  token_watch.reset();
  // Health says NOT_SERVING from now on (load balancers stop sending), then
  // the server stops taking calls: unary calls in flight get up to 1 s to
  // finish; after that every call still open (a backup stream whose client
  // stopped reading, a slow client) is cancelled. A handler that is
  // cancelled still runs to its end (its database writes commit or roll
  // back as one transaction); only its answer is lost, so nothing the
  // client was told is lost.
  if (auto* health = server->server->GetHealthCheckService(); health != nullptr) {
    health->Shutdown();
  }
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  (*signer)->Stop();  // the last signature counts go to the audit log
  (*ca)->Audit("system", "service.stopped", nlohmann::json{{"signal", SignalName(sig)}}.dump());
  // The last word: the head, service.stopped included, signed by the CA.
  Checkpoint(**ca, "at stop");
  service::log::Info(
      "stopped", nlohmann::json{{"signal", SignalName(sig)},
                                {"stop_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now() - stop_started)
                                                .count()}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // gRPC's locks are absl::Mutex; Debian's abseil checks every acquisition
  // for lock-order cycles, a few percent of a small RPC (the signing path).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Block the stop and reload signals before gRPC starts its threads, so
  // only Run's sigwait sees them (also those sent during start-up).
  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &handled, nullptr);

  std::string config, port_file;
  bool accept_broken_audit = false, check_config = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc) {
      config = argv[++i];
    } else if (a == "--port-file" && i + 1 < argc) {
      port_file = argv[++i];
    } else if (a == "--accept-broken-audit") {
      accept_broken_audit = true;
    } else if (a == "--check-config") {
      check_config = true;
    } else if (a == "--version" || a == "-V") {
      std::printf("keywardend %s\n", KEYWARDEN_VERSION);
      return 0;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: keywardend --config FILE [--port-file FILE] [--accept-broken-audit]\n"
          "       keywardend --config FILE --check-config\n"
          "       keywardend --version\n"
          "  -c, --config FILE      the configuration (keywarden.toml(5))\n"
          "  --port-file FILE       write the port served to FILE once serving\n"
          "  --accept-broken-audit  start even if the audit log does not verify (recorded\n"
          "                         in the audit log as audit.broken_accepted)\n"
          "  --check-config         check the configuration, its files, the token login\n"
          "                         (and its archival self-test),\n"
          "                         the database and the KRAs, then exit (0: usable);\n"
          "                         writes nothing to the token or the database\n"
          "  -V, --version          print the version and exit\n");
      return 0;
    } else {
      std::fprintf(stderr, "keywardend: unknown argument \"%s\" (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (config.empty()) {
    std::fprintf(stderr, "keywardend: --config FILE is required\n");
    return 2;
  }
  if (check_config) return service::CheckConfig(config, stdout);
  return Run(config, port_file, accept_broken_audit);
}
