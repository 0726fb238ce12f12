#include "service/server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/crypto.h>

#include "hsm/strings.h"
#include "pki/files.h"
#include "service/server/services.h"

namespace keywarden::service {
namespace {

absl::StatusOr<std::string> ReadText(const std::string& path, const char* what) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok())
    return absl::FailedPreconditionError(StrCat(what, ": ", bytes.status().message()));
  return std::string(bytes->begin(), bytes->end());
}

}  // namespace

absl::StatusOr<RunningServer> StartServer(const Config& config, CertificateAuthority& ca,
                                          std::vector<std::unique_ptr<grpc::Service>> extra) {
  auto cert = ReadText(config.server.tls_certificate, "TLS certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadText(config.server.tls_key, "TLS key");
  if (!key.ok()) return key.status();
  std::string roots;
  for (const auto& path : config.server.client_ca) {
    auto pem = ReadText(path, "client CA");
    if (!pem.ok()) return pem.status();
    roots += *pem;
  }
  if (roots.empty())
    return absl::FailedPreconditionError("no client CA configured: mTLS is mandatory");

  grpc::SslServerCredentialsOptions tls(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  tls.pem_root_certs = roots;
  tls.pem_key_cert_pairs.push_back({*key, *cert});
  OPENSSL_cleanse(key->data(), key->size());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  RunningServer running;
  builder.AddListeningPort(config.server.listen, grpc::SslServerCredentials(tls), &running.port);
  // Above the CA's own request limit, so an oversized request gets the CA's clear
  // INVALID_ARGUMENT rather than a transport error.
  builder.SetMaxReceiveMessageSize(16 << 20);
  const int threads = config.server.threads > 0
                          ? config.server.threads
                          : static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, threads);
  running.services = MakeServices(ca);
  for (auto& s : extra) running.services.push_back(std::move(s));
  for (auto& s : running.services) builder.RegisterService(s.get());
  running.server = builder.BuildAndStart();
  if (!running.server || running.port == 0) {
    return absl::UnavailableError(StrCat("cannot listen on ", config.server.listen));
  }
  return running;
}

}  // namespace keywarden::service
