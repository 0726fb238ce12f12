// The one place domain results become gRPC: status mapping (with the
// seed's HRESULT in an ErrorDetail), principal extraction from the mTLS
// client certificate, and authorization against service/authz.cc's table.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include "absl/status/status.h"
#include "keywarden/v1/keywarden.pb.h"
#include "service/ca/authority.h"
#include "service/config.h"
#include "service/storage/store.h"

namespace keywarden::service {

grpc::Status ToGrpc(const absl::Status& status);

// The server's interceptors: a request gRPC cannot parse (not protobuf, a
// string that is not UTF-8) gets INVALID_ARGUMENT with a message, not
// gRPC's INTERNAL with none.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeInterceptors();

// Authorizes `method` for the caller (ServerContextBase: sync and callback
// handlers alike): identifies the verified client certificate by its client
// CA and subject or pin (service/trust), refuses it if it or a certificate
// above it is revoked or its issuer's revocation data is not current, then
// checks service/authz.cc's table. Refusals are audited (a revoked
// certificate at most once a minute, with the count of calls refused).
struct Caller : Requester {};
absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method);
// The same, then the request's fields against their length limits
// (server/limits.h): INVALID_ARGUMENT naming the field, before the handler
// stores or audits any of it.
absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method, const google::protobuf::Message& request);

// Domain -> proto.
v1::Disposition ToProto(Disposition d);
void Fill(const RequestRecord& r, v1::RequestInfo* out);
void Fill(const CertificateRecord& c, v1::CertificateInfo* out);
void Fill(const EnrollmentOutcome& o, const std::vector<std::vector<uint8_t>>& chain,
          v1::EnrollmentResult* out);

}  // namespace keywarden::service
