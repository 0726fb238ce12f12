// The connection from `keywarden` to keywardend: mutual TLS with a client
// certificate and key read from files, the daemon's certificate checked
// against a trust anchor, and gRPC failures turned into absl::Status values
// whose message carries the daemon's words and HRESULT.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "keywarden/v1/keywarden.grpc.pb.h"

namespace keywarden::cli {

// Where the daemon is and who we are. Filled from the command line, each
// option falling back to its environment variable.
struct ConnectionOptions {
  std::string server;       // HOST:PORT[,HOST:PORT...]  $KEYWARDEN_SERVER
  std::string client_cert;  // PEM file             $KEYWARDEN_CLIENT_CERT
  std::string client_key;   // PEM file             $KEYWARDEN_CLIENT_KEY
  std::string server_ca;    // PEM trust anchor(s)  $KEYWARDEN_SERVER_CA
  std::string server_name;  // TLS name to check    $KEYWARDEN_SERVER_NAME
  int timeout_seconds = 60;
};

// Adds --server, --client-cert, --client-key, --server-ca, --server-name and
// --timeout to `app` (the top-level app, so every verb has them).
void AddConnectionOptions(CLI::App& app, ConnectionOptions& options);

// `status` converted for the CLI: the same code (gRPC and absl codes share
// their numbers), the daemon's message, and when the "grpc-status-details-bin"
// trailer holds a keywarden.v1.RpcStatus whose details[0] is an ErrorDetail,
// " (0x%08x SYMBOL)" appended and both attached as payloads (output.h). UNAVAILABLE
// becomes "cannot reach keywardend at TARGET: ...".
absl::Status FromGrpc(const grpc::Status& status, const std::string& target);

// Set by FromGrpc on a failure keywardend itself sent (its answers carry a
// keywarden.v1.RpcStatus): UNAVAILABLE with it is the CA's "database
// unavailable" / "token unavailable", not a connection failure.
inline constexpr char kFromDaemonPayload[] = "type.keywarden.cli/from-daemon";
// UNAVAILABLE that did not come from keywardend: no connection, a broken
// one, or a TLS handshake that failed.
bool IsConnectionFailure(const absl::Status& status);

// --server split at commas, each HOST:PORT; INVALID_ARGUMENT naming the bad one.
absl::StatusOr<std::vector<std::string>> ParseServers(const std::string& servers);

// Whether a verb may be run again on the next --server after a connection
// failure in the middle of it. Every verb moves on to the next server when
// the previous one never answered (nothing was sent to it); only kIdempotent
// ones (reads) also when a connection broke after the verb had started,
// since a request that reached the first server may have been carried out.
enum class Failover { kUnlessSent, kIdempotent };

class Client {
 public:
  // Reads the certificate files and builds the channel; does not connect yet
  // (the first call does). Fails early on a missing server or unreadable file.
  // With several servers, the channel is to the first one.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ConnectionOptions& options);
  // The same to `target` (one of the servers).
  static absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const ConnectionOptions& options,
                                                           const std::string& target);
  // One harmless read (GetCaCertificate) with a deadline of `timeout`: OK
  // when the daemon answers at all (even with an error of its own), the
  // failure otherwise (no connection, or no answer in time).
  absl::Status Probe(std::chrono::seconds timeout);

  // A context for one call, with the configured deadline (or `timeout` when given).
  std::unique_ptr<grpc::ClientContext> Context(
      std::optional<std::chrono::seconds> timeout = std::nullopt) const;
  // FromGrpc with this client's target; a deadline that expired before the
  // channel ever connected is reported as "cannot reach" too.
  absl::Status Check(const grpc::Status& status) const;

  const std::string& target() const { return target_; }
  v1::Enrollment::Stub& enrollment() { return *enrollment_; }
  v1::Officer::Stub& officer() { return *officer_; }
  v1::Administration::Stub& administration() { return *administration_; }
  v1::Audit::Stub& audit() { return *audit_; }
  v1::Backup::Stub& backup() { return *backup_; }

 private:
  Client() = default;

  std::string target_;
  std::chrono::seconds timeout_{60};
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Enrollment::Stub> enrollment_;
  std::unique_ptr<v1::Officer::Stub> officer_;
  std::unique_ptr<v1::Administration::Stub> administration_;
  std::unique_ptr<v1::Audit::Stub> audit_;
  std::unique_ptr<v1::Backup::Stub> backup_;
};

// What a verb that talks to the daemon produces: the JSON object, the text
// for a person, and the exit code (0 unless the verb says otherwise).
struct Reply {
  nlohmann::json json;
  std::string text;
  int exit_code = kExitOk;
};
using ClientVerb = std::function<absl::StatusOr<Reply>(Client&)>;

// The reply for an enrollment result (submit, retrieve, approve): printed as
// format.h's ReportEnrollment does, exit code 0 issued/pending, 1 otherwise.
absl::StatusOr<Reply> EnrollmentReply(const v1::EnrollmentResult& result,
                                      const std::string& out_path);

// An Action that connects, runs `verb`, and prints its reply or its failure.
// With several --server targets: the first that answers runs it, following
// `failover`; when none does, the failure names each of them.
Action WithClient(const Output& out, const ConnectionOptions& conn, ClientVerb verb,
                  Failover failover = Failover::kUnlessSent);

}  // namespace keywarden::cli
