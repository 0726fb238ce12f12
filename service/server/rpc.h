// The one place domain results become gRPC: status mapping (with the
// seed's HRESULT in an ErrorDetail), principal extraction from the mTLS
// client certificate, and authorization against service/authz.cc's table.
#pragma once

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "keywarden/v1/keywarden.pb.h"
#include "service/ca/authority.h"
#include "service/config.h"
#include "service/storage/store.h"

namespace keywarden::service {

grpc::Status ToGrpc(const absl::Status& status);

// RFC 4514 subject of the verified client certificate; empty if none.
// (ServerContextBase: sync and callback handlers alike.)
std::string PrincipalOf(const grpc::ServerContextBase& context);

// Authorizes `method` for the caller. Refusals are audited.
struct Caller {
  std::string principal;
  std::vector<Role> roles;
  bool Has(Role r) const;
};
absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method);

// Domain -> proto.
v1::Disposition ToProto(Disposition d);
void Fill(const RequestRecord& r, v1::RequestInfo* out);
void Fill(const CertificateRecord& c, v1::CertificateInfo* out);
void Fill(const EnrollmentOutcome& o, const std::vector<std::vector<uint8_t>>& chain,
          v1::EnrollmentResult* out);

}  // namespace keywarden::service
