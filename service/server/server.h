// Builds the gRPC server: mutual TLS only (a client certificate from a
// configured client CA is required and verified at the handshake), the
// keywarden.v1 services, the standard health service and reflection.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpc/grpc_security.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/service_type.h>

#include "absl/status/statusor.h"
#include "service/ca/authority.h"

namespace keywarden::service {

// The listening port's TLS material: the server certificate (chain) and key
// ([server] tls_certificate, tls_key) and the client CAs ([server]
// client_ca). Reload() reads the files again while the server runs; the new
// material is used by handshakes that start afterwards, connections already
// open keep theirs. Material that fails the checks is not used: the previous
// one stays in service.
class ServerTls {
 public:
  // Reads and checks the configured files; an error names the file and what
  // is wrong with it.
  static absl::StatusOr<std::unique_ptr<ServerTls>> Load(const Config& config);
  ~ServerTls();
  ServerTls(const ServerTls&) = delete;
  ServerTls& operator=(const ServerTls&) = delete;

  // Credentials for the listening port (mutual TLS: a client certificate
  // chaining to a client CA is required). Call once; `this` must outlive
  // the server they are used by.
  std::shared_ptr<grpc::ServerCredentials> Credentials();

  // Reads and checks the files again. On success new handshakes use them and
  // the result says what is now served; on error nothing changes.
  absl::StatusOr<std::vector<std::string>> Reload();

  // What is served: the server certificate (subject, serial, expiry) and the
  // number of client CA certificates.
  std::vector<std::string> Describe() const;

 private:
  explicit ServerTls(const Config& config) : config_(config) {}
  // Reads the files into a gRPC certificate config (owned by the caller).
  absl::StatusOr<grpc_ssl_server_certificate_config*> Read(std::vector<std::string>* description);
  // gRPC asks before every handshake whether the material changed.
  static grpc_ssl_certificate_config_reload_status Fetch(
      void* self, grpc_ssl_server_certificate_config** config);

  const Config& config_;
  // The material the next handshake picks up (null: unchanged).
  std::atomic<grpc_ssl_server_certificate_config*> next_{nullptr};
  mutable std::mutex mu_;  // reloads and description_
  std::vector<std::string> description_;
};

struct RunningServer {
  std::unique_ptr<ServerTls> tls;  // outlives the server that uses it
  std::unique_ptr<grpc::Server> server;
  std::vector<std::unique_ptr<grpc::Service>> services;
  int port = 0;
};

// `extra` services (e.g. delegated signing) are served beside keywarden.v1's own.
absl::StatusOr<RunningServer> StartServer(const Config& config, CertificateAuthority& ca,
                                          std::vector<std::unique_ptr<grpc::Service>> extra = {});

}  // namespace keywarden::service
