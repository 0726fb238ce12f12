// Builds the gRPC server: mutual TLS only (a client certificate from a
// configured client CA is required and verified at the handshake), the
// keywarden.v1 services, the standard health service and reflection.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/service_type.h>

#include "absl/status/statusor.h"
#include "service/ca/authority.h"

namespace keywarden::service {

struct RunningServer {
  std::unique_ptr<grpc::Server> server;
  std::vector<std::unique_ptr<grpc::Service>> services;
  int port = 0;
};

// `extra` services (e.g. delegated signing) are served beside keywarden.v1's own.
absl::StatusOr<RunningServer> StartServer(const Config& config, CertificateAuthority& ca,
                                          std::vector<std::unique_ptr<grpc::Service>> extra = {});

}  // namespace keywarden::service
