// keywarden.v1.Signing over gRPC: thin handlers that check the Signer role
// (service/authz.cc), translate protobuf to signing::DelegatedSigner calls
// and map errors with ToGrpc. Implemented with the callback API: a handler
// runs to completion on the gRPC thread that received the call, so a
// signature costs one thread hop less than with the synchronous API's
// thread manager.
#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "service/ca/authority.h"
#include "service/signing/delegated_signer.h"

namespace keywarden::service {

std::unique_ptr<grpc::Service> MakeSigningService(CertificateAuthority& ca,
                                                  signing::DelegatedSigner& signer);

}  // namespace keywarden::service
