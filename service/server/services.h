// gRPC service implementations: thin handlers that authorize, call the
// CertificateAuthority, and translate.
#pragma once

#include <memory>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "keywarden/v1/keywarden.grpc.pb.h"
#include "service/ca/authority.h"

namespace keywarden::service {

std::vector<std::unique_ptr<grpc::Service>> MakeServices(CertificateAuthority& ca);

}  // namespace keywarden::service
