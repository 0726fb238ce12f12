#include "cli/client.h"

#include <grpc/support/log.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/cord.h"
#include "cli/format.h"
#include "cli/output.h"
#include "hsm/strings.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

// The file's bytes as a string; `what` names the option in errors.
absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(), StrCat(what, ": ", bytes.status().message()));
  }
  std::string out(bytes->begin(), bytes->end());
  OPENSSL_cleanse(bytes->data(), bytes->size());
  return out;
}

// "host:port", "[v6]:port": true when a port follows the host.
bool HasPort(const std::string& target) {
  const size_t bracket = target.rfind(']');
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) return false;
  if (bracket != std::string::npos && colon < bracket) return false;
  return colon + 1 < target.size() && colon > 0;
}

// gRPC's own log lines ("E1125 ... Handshake failed ...") would repeat what
// the error message already says; they stay available with $GRPC_VERBOSITY.
void QuietGrpcLog(gpr_log_func_args* /*args*/) {}

// `status`'s message, naming `target` unless it does already.
std::string Named(const std::string& target, const absl::Status& status) {
  const std::string message(status.message());
  if (message.find(target) != std::string::npos) return message;
  return StrCat(target, ": ", message);
}

// How long the probe of each --server waits for an answer before moving on.
constexpr int kProbeTimeoutSeconds = 10;

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

}  // namespace

void AddConnectionOptions(CLI::App& app, ConnectionOptions& o) {
  const char* group = "Connection";
  app.add_option("--server", o.server,
                 "keywardend address, HOST:PORT; several comma-separated ones (replicas of one "
                 "CA) are tried in order, moving on when one cannot be reached")
      ->envname("KEYWARDEN_SERVER")
      ->group(group);
  app.add_option("--client-cert", o.client_cert, "Client certificate (PEM) for mutual TLS")
      ->envname("KEYWARDEN_CLIENT_CERT")
      ->group(group);
  app.add_option("--client-key", o.client_key, "Private key (PEM) of the client certificate")
      ->envname("KEYWARDEN_CLIENT_KEY")
      ->group(group);
  app.add_option("--server-ca", o.server_ca,
                 "Trust anchor(s) (PEM) for the daemon's TLS certificate "
                 "(default: the system's roots)")
      ->envname("KEYWARDEN_SERVER_CA")
      ->group(group);
  app.add_option("--server-name", o.server_name,
                 "Name the daemon's TLS certificate must carry (default: the host part of "
                 "--server)")
      ->envname("KEYWARDEN_SERVER_NAME")
      ->group(group);
  app.add_option("--timeout", o.timeout_seconds, "Seconds to wait for each call (default 60)")
      ->check(CLI::Range(1, 86400))
      ->group(group);
}

absl::Status FromGrpc(const grpc::Status& status, const std::string& target) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(static_cast<int>(status.error_code()));
  std::string message = status.error_message();

  v1::ErrorDetail detail;
  bool has_detail = false;
  v1::RpcStatus rpc;
  if (!status.error_details().empty() && rpc.ParseFromString(status.error_details())) {
    if (message.empty()) message = rpc.message();
    if (rpc.details_size() > 0 && rpc.details(0).UnpackTo(&detail)) {
      has_detail = true;
      if (message.empty()) message = detail.message();
    }
  }
  if (message.empty())
    message = StrCat("the call failed with gRPC code ", static_cast<int>(status.error_code()));
  if (code == absl::StatusCode::kUnavailable) {
    message = StrCat("cannot reach keywardend at ", target, ": ", message);
  }
  std::string hresult, symbol;
  if (has_detail && detail.hresult() != 0) {
    hresult = Hex32(detail.hresult());
    symbol = detail.symbol();
    // The daemon's message usually names the code already; then add only the symbol.
    if (message.find(hresult) != std::string::npos) {
      if (!symbol.empty()) message += StrCat(" (", symbol, ")");
    } else {
      message +=
          symbol.empty() ? StrCat(" (", hresult, ")") : StrCat(" (", hresult, " ", symbol, ")");
    }
  }
  if (has_detail) {
    // An ambiguous search lists what matched, one candidate per line.
    for (const auto& c : detail.candidates()) message += StrCat("\n  ", c);
  }
  absl::Status out(code, message);
  if (!status.error_details().empty() && rpc.ParseFromString(status.error_details())) {
    out.SetPayload(kFromDaemonPayload, absl::Cord("1"));
  }
  if (!hresult.empty()) out.SetPayload(kHResultPayload, absl::Cord(hresult));
  if (!symbol.empty()) out.SetPayload(kSymbolPayload, absl::Cord(symbol));
  return out;
}

bool IsConnectionFailure(const absl::Status& status) {
  return absl::IsUnavailable(status) && !status.GetPayload(kFromDaemonPayload).has_value();
}

absl::StatusOr<std::vector<std::string>> ParseServers(const std::string& servers) {
  if (servers.empty()) {
    return absl::InvalidArgumentError(
        "no daemon address: give --server HOST:PORT or set $KEYWARDEN_SERVER");
  }
  std::vector<std::string> out;
  size_t pos = 0;
  for (;;) {
    const size_t comma = servers.find(',', pos);
    std::string one =
        servers.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    const size_t first = one.find_first_not_of(" \t");
    const size_t last = one.find_last_not_of(" \t");
    one = first == std::string::npos ? std::string() : one.substr(first, last - first + 1);
    if (one.empty()) {
      return absl::InvalidArgumentError(
          StrCat("--server ", servers, ": an empty address in the comma-separated list"));
    }
    if (!HasPort(one)) {
      return absl::InvalidArgumentError(
          StrCat("--server ", one, ": expected HOST:PORT, e.g. ca.example.net:7443"));
    }
    out.push_back(std::move(one));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (out.size() > 16) {
    return absl::InvalidArgumentError(
        StrCat("--server: ", out.size(), " addresses; at most 16 are tried"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ConnectionOptions& o) {
  auto servers = ParseServers(o.server);
  if (!servers.ok()) return servers.status();
  return ConnectTo(o, servers->front());
}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectTo(const ConnectionOptions& o,
                                                          const std::string& target) {
  if (o.client_cert.empty() != o.client_key.empty()) {
    return absl::InvalidArgumentError(
        "--client-cert and --client-key go together: give both or neither");
  }
  grpc::SslCredentialsOptions tls;
  if (!o.server_ca.empty()) {
    auto ca = ReadPem(o.server_ca, "--server-ca");
    if (!ca.ok()) return ca.status();
    tls.pem_root_certs = std::move(*ca);
  }
  if (!o.client_cert.empty()) {
    auto cert = ReadPem(o.client_cert, "--client-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(o.client_key, "--client-key");
    if (!key.ok()) return key.status();
    tls.pem_cert_chain = std::move(*cert);
    tls.pem_private_key = std::move(*key);
  }
  const char* verbosity = std::getenv("GRPC_VERBOSITY");
  if (verbosity == nullptr || *verbosity == '\0') gpr_set_log_function(QuietGrpcLog);

  grpc::ChannelArguments args;
  if (!o.server_name.empty()) args.SetSslTargetNameOverride(o.server_name);
  args.SetMaxReceiveMessageSize(256 << 20);
  auto credentials = grpc::SslCredentials(tls);
  // gRPC keeps its own copy; ours is wiped.
  OPENSSL_cleanse(tls.pem_private_key.data(), tls.pem_private_key.size());

  std::unique_ptr<Client> c(new Client());
  c->target_ = target;
  c->timeout_ = std::chrono::seconds(o.timeout_seconds);
  c->channel_ = grpc::CreateCustomChannel(target, credentials, args);
  c->enrollment_ = v1::Enrollment::NewStub(c->channel_);
  c->officer_ = v1::Officer::NewStub(c->channel_);
  c->administration_ = v1::Administration::NewStub(c->channel_);
  c->audit_ = v1::Audit::NewStub(c->channel_);
  c->backup_ = v1::Backup::NewStub(c->channel_);
  return c;
}

std::unique_ptr<grpc::ClientContext> Client::Context(
    std::optional<std::chrono::seconds> timeout) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout.value_or(timeout_));
  return ctx;
}

absl::Status Client::Check(const grpc::Status& status) const {
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      channel_->GetState(false) != GRPC_CHANNEL_READY) {
    return absl::UnavailableError(StrCat("cannot reach keywardend at ", target_,
                                         ": no connection before the deadline (", timeout_.count(),
                                         " s)"));
  }
  return FromGrpc(status, target_);
}

absl::Status Client::Probe(std::chrono::seconds timeout) {
  v1::CertificateChain chain;
  v1::GetCaCertificateRequest request;
  auto ctx = Context(timeout);
  const absl::Status st = Check(enrollment_->GetCaCertificate(ctx.get(), request, &chain));
  // Any answer of keywardend's own counts; a deadline with no answer (a
  // hung daemon) does not.
  if (st.ok() || st.GetPayload(kFromDaemonPayload).has_value()) return absl::OkStatus();
  return st;
}

Action WithClient(const Output& out, const ConnectionOptions& conn, ClientVerb verb,
                  Failover failover) {
  return [&out, &conn, verb = std::move(verb), failover] {
    auto servers = ParseServers(conn.server);
    if (!servers.ok()) return out.Fail(servers.status());
    if (servers->size() == 1) {
      auto client = Client::ConnectTo(conn, servers->front());
      if (!client.ok()) return out.Fail(client.status());
      auto reply = verb(**client);
      if (!reply.ok()) return out.Fail(reply.status());
      out.Result(reply->json, reply->text);
      return reply->exit_code;
    }
    // Several replicas: the first that answers. Nothing that changes state
    // is sent before the probe has shown the daemon answers.
    const auto probe_timeout =
        std::chrono::seconds(std::min(conn.timeout_seconds, kProbeTimeoutSeconds));
    std::vector<std::string> failures;
    for (size_t i = 0; i < servers->size(); ++i) {
      const std::string& target = (*servers)[i];
      auto client = Client::ConnectTo(conn, target);
      if (!client.ok()) return out.Fail(client.status());
      if (auto st = (*client)->Probe(probe_timeout); !st.ok()) {
        failures.push_back(Named(target, st));
        continue;
      }
      auto reply = verb(**client);
      if (reply.ok()) {
        out.Result(reply->json, reply->text);
        return reply->exit_code;
      }
      if (IsConnectionFailure(reply.status())) {
        if (failover == Failover::kIdempotent) {
          failures.push_back(Named(target, reply.status()));
          continue;
        }
        return out.Fail(absl::Status(
            reply.status().code(),
            StrCat(reply.status().message(),
                   " (the connection broke after the request was sent: it may have been carried "
                   "out there, so it is not sent to another server; check before repeating it)")));
      }
      return out.Fail(reply.status());
    }
    return out.Fail(absl::UnavailableError(StrCat(
        "no keywardend answered (", StrJoin(*servers, ", "), "): ", StrJoin(failures, "; "))));
  };
}

absl::StatusOr<Reply> EnrollmentReply(const v1::EnrollmentResult& result,
                                      const std::string& out_path) {
  Reply reply;
  auto j = ReportEnrollment(result, out_path, reply.text);
  if (!j.ok()) return j.status();
  reply.json = std::move(*j);
  reply.exit_code = EnrollmentExitCode(result);
  return reply;
}

}  // namespace keywarden::cli
