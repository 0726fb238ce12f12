// keywarden.v1.Signing over gRPC: thin handlers that check the Signer role
// (service/authz.cc), translate protobuf to signing::DelegatedSigner calls
// and map errors with ToGrpc. Callback API: a call costs less CPU than with
// the synchronous API's thread manager (measured with
// tests/bench/sign_rpc_bench, docs/DECISIONS.md). The calls run on
// [server] threads workers (default one per core), not on gRPC's threads.
#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "service/ca/authority.h"
#include "service/signing/delegated_signer.h"

namespace keywarden::service {

std::unique_ptr<grpc::Service> MakeSigningService(CertificateAuthority& ca,
                                                  signing::DelegatedSigner& signer);

}  // namespace keywarden::service
